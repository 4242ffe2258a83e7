"""``poselift infer`` stage by stage on CPU: frames/s of decode, detect, 2D, lift, render and end
to end, beside each network's forward-only rate measured in the same run.

Networks are randomly initialised at the released sizes (no weights can be downloaded here;
speed does not depend on the values): YOLOX (--yolox tiny at 416 / s at 640) whose head is
set to return a few person boxes per frame, FastPose-R50 at 256x192 (SIKR), and VideoPose3D's
243-frame 1024-channel lifter. The clip is written by the script (people drawn on noise).

    .venv/bin/python benchmarks/bench_infer.py --frames 48 --yolox tiny --threads 2

Prints a markdown table (paste into docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

SIZES = {"tiny": (0.33, 0.375, 416), "s": (0.33, 0.50, 640)}


def write_clip(path: Path, frames: int, w: int, h: int) -> None:
    rng = np.random.default_rng(0)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
    # a smooth scene with mild sensor noise (uniform per-pixel noise would be an encoder's worst case)
    ramp = np.linspace(60, 160, w)[None, :, None] + np.linspace(0, 40, h)[:, None, None]
    for t in range(frames):
        img = np.clip(ramp + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
        for k, x in enumerate((w * 0.3 + 3 * t, w * 0.7 - 3 * t)):
            cv2.rectangle(img, (int(x) - 30, h // 3), (int(x) + 30, h - 20), (200, 200 - 80 * k, 200), -1)
        vw.write(img)
    vw.release()


def make_yolox(path: Path, size: str) -> None:
    from poselift.extract import YOLOX

    depth, width, s = SIZES[size]
    m = YOLOX(depth=depth, width=width, test_size=s).eval()
    with torch.no_grad():  # a few large person boxes from the stride-32 level (see the module doc)
        for k in range(3):
            for conv in (m.head.obj_preds[k], m.head.cls_preds[k], m.head.reg_preds[k]):
                conv.weight.zero_()
            m.head.obj_preds[k].bias.fill_(10.0 if k == 2 else -10.0)
            m.head.cls_preds[k].bias.fill_(-10.0)
            m.head.cls_preds[k].bias[0] = 10.0
            m.head.reg_preds[k].bias.copy_(torch.tensor([0.0, 0.0, math.log(26), math.log(26)]))
    torch.save({"model": m.state_dict()}, path)


def rate(n: int, fn, repeat: int = 1) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n * repeat / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=48, help="clip length (default 48)")
    p.add_argument("--width", type=int, default=640, help="clip width (default 640)")
    p.add_argument("--height", type=int, default=360, help="clip height (default 360)")
    p.add_argument("--yolox", default="tiny", choices=sorted(SIZES), help="YOLOX size (default tiny)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from poselift.extract import FastPose, load_yolox, yolox_preprocess
    from poselift.infer import InferOptions, run_infer
    from poselift.infer.sources import list_inputs, read_frames
    from poselift.lifting.videopose3d.infer import predict_sequence
    from poselift.lifting.videopose3d.model import TemporalModel
    from poselift.lifting.videopose3d.interop import export_videopose3d

    tmp = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    try:
        clip = tmp / "clip.avi"
        write_clip(clip, a.frames, a.width, a.height)
        make_yolox(tmp / "yolox.pth", a.yolox)
        fp = FastPose(17, layers=(3, 4, 6, 3)).eval()
        torch.save(fp.state_dict(), tmp / "fastpose.pth")
        lifter = TemporalModel(17, 2, 17, filter_widths=[3, 3, 3, 3, 3], channels=1024).eval()
        export_videopose3d(tmp / "lifter.bin", lifter)
        # forward-only rates of each network
        det = load_yolox(tmp / "yolox.pth")
        frame = next(read_frames(list_inputs([clip])[0]))[1]
        x = torch.stack([yolox_preprocess(frame, det.test_size)[0]] * 8)
        fwd: dict[str, float] = {}
        with torch.inference_mode():
            fwd["detect"] = rate(8, lambda: det(x))
            crops = torch.randn(8, 3, 256, 192)
            fwd["2D (per box)"] = rate(8, lambda: fp(crops))
            seq = np.random.default_rng(0).normal(size=(a.frames, 17, 2)).astype(np.float32) * 0.3
            fwd["lift"] = rate(a.frames, lambda: predict_sequence(lifter, seq, pad=121), repeat=3)
        # the command end to end, from an empty folder; stage times from its own timings
        o = InferOptions(lifter=str(tmp / "lifter.bin"), detector=str(tmp / "yolox.pth"),
                         estimator_weights=str(tmp / "fastpose.pth"), device="cpu", progress=False)
        v = list_inputs([clip])[0]
        dec = rate(a.frames, lambda: sum(1 for _ in read_frames(v)))
        t = time.perf_counter()
        res = run_infer([str(clip)], tmp / "out", o)
        e2e = a.frames / (time.perf_counter() - t)
        z = np.load(res["paths"]["clip:npz"])
        boxes = int(z["detected"].sum())
        tm = res["timings"]
        tracks = int(res["tracks"])
        stage = {"decode": dec, "detect (+decode, track)": a.frames / tm["detect_s"],
                 "2D (+decode, crop)": a.frames / tm["keypoints_s"], "lift": a.frames / tm["lift_s"],
                 "render (+decode)": a.frames / tm["render_s"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    slow_name = min(("detect", "2D (per box)"), key=lambda k: fwd[k] / (boxes / a.frames if "box" in k else 1))
    slow = fwd[slow_name] / (boxes / a.frames if "box" in slow_name else 1)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} threads; "
          f"{a.frames} frames {a.width}x{a.height}, YOLOX-{a.yolox}, {boxes / a.frames:.1f} person boxes/frame\n")
    print("| stage | frames/s |\n|---|---:|")
    for k, val in stage.items():
        print(f"| {k} | {val:.2f} |")
    print(f"| **end to end** (`run_infer`, empty folder) | **{e2e:.2f}** |")
    print("\n| network, forward only | items/s |\n|---|---:|")
    for k, val in fwd.items():
        print(f"| {k} | {val:.2f} |")
    print(f"\nslowest network per frame: {slow_name} at {slow:.1f} frames/s; end to end = "
          f"{100 * e2e / slow:.0f} % of it")
    # The stages run one after another, so even with zero overhead a frame costs the detector's
    # forward plus the 2D forward of its boxes: the end-to-end ceiling is their harmonic sum.
    det_f, twod_f = fwd["detect"], fwd["2D (per box)"] / max(boxes / a.frames, 1e-9)
    bound = 1.0 / (1.0 / det_f + 1.0 / twod_f)
    print(f"sequential ceiling (detect + 2D forward only, nothing else): {bound:.2f} frames/s = "
          f"{100 * bound / slow:.0f} % of the slowest network; end to end reaches {100 * e2e / bound:.0f} % "
          f"of that ceiling; wall {a.frames / e2e:.1f} s, of which outside detect/2D/lift forwards "
          f"{a.frames / e2e - a.frames / det_f - a.frames / twod_f - tracks * a.frames / fwd['lift']:.1f} s "
          f"(lift forward counted once per track, {tracks} tracks)")


if __name__ == "__main__":
    main()
