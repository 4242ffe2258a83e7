"""Extraction and training throughput with 1 and 2 processes (torchrun, gloo, CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py --out /tmp/scaling

Extraction: ``poselift-extract-dist`` (poselift.extract.distributed_cli) on synthetic videos with a
random-init ResNet-50 (width ``--base-width``, 1 thread per rank); frames/s from the ranks' own
timers (the slowest rank) and from wall time including startup and the merge. Training: the
VideoPose3D lifter (``train_lifter``, sync BN) on a synthetic Human3.6M-layout cache; examples/s
of the last epoch. Writes ``scaling.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LIFT_WORKER = """
import json, sys
from poselift.lifting.config import LiftConfig
from poselift.lifting.videopose3d.train import train_lifter
train_lifter(LiftConfig(**json.loads(sys.argv[1])))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONSAFEPATH="1", PYTHONWARNINGS="ignore")
    return env


def make_videos(d: Path, n: int, frames: int) -> Path:
    import cv2

    d.mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(n):
        w = cv2.VideoWriter(str(d / f"v{k}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 240))
        for i in range(frames):
            f = np.full((240, 320, 3), (30, 60 + i % 100, 90), np.uint8)
            f[40:200, (i + 5 * k) % 200:(i + 5 * k) % 200 + 80] = (0, 0, 255)
            w.write(f)
        w.release()
        np.save(d / f"b{k}.npy", np.array([[(i + 5 * k) % 200, 40, (i + 5 * k) % 200 + 80, 200]
                                           for i in range(frames)], np.float32))
        entries.append({"seq_id": f"seq{k}", "source": f"v{k}.mp4", "boxes": f"b{k}.npy"})
    (d / "m.json").write_text(json.dumps(entries))
    return d / "m.json"


def bench_extract(manifest: Path, out: Path, nproc: int, width: int) -> dict:
    target = out / f"extract_{nproc}.h5"
    target.unlink(missing_ok=True)
    cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "poselift.extract.distributed_cli",
           str(target), "--manifest", str(manifest), "--random-init", "--base-width", str(width),
           "--workers", "0", "--device", "cpu", "--threads", "1", "--no-progress"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=out, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-2000:])
    ranks = [(int(f), float(s)) for f, s in re.findall(r"; (\d+) frames in ([\d.]+) s", r.stdout)]
    frames = sum(f for f, _ in ranks)
    slowest = max(s for _, s in ranks)
    return {"nproc": nproc, "frames": frames, "frames_per_s": frames / slowest,
            "wall_s": wall, "frames_per_s_wall": frames / wall}


def bench_train(gt: Path, kp: Path, out: Path, nproc: int, channels: int) -> dict:
    run = out / f"lift_{nproc}"
    cfg = dict(gt_cache=str(gt), keypoints_cache=str(kp), train_subjects=["S1", "S5"], test_subjects=[],
               architecture=[3, 3, 3], channels=channels, epochs=2, batch_size=256, eval_every=0,
               checkpoint_every=0, out_dir=str(run), progress=False, device="cpu", num_threads=1)
    script = out / "lift_worker.py"
    script.write_text(LIFT_WORKER)
    t0 = time.perf_counter()
    r = subprocess.run([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(script), json.dumps(cfg)],
                       cwd=out, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-2000:])
    hist = json.loads((run / "summary.json").read_text())["history"]
    # examples/s of rank 0 x world = global examples/s (ranks run in lockstep)
    return {"nproc": nproc, "examples_per_s": hist[-1]["examples_per_s"] * nproc, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("scaling"), help="scratch folder for videos and caches")
    p.add_argument("--videos", type=int, default=8, help="synthetic videos to extract (default 8)")
    p.add_argument("--frames", type=int, default=60, help="frames per video (default 60)")
    p.add_argument("--base-width", type=int, default=32, help="ResNet-50 base width (64 = full size; default 32)")
    p.add_argument("--channels", type=int, default=256, help="lifter channels for the training part (default 256)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    manifest = make_videos(a.out / "videos", a.videos, a.frames)
    res: dict = {"cpu_count": os.cpu_count(), "extract": [], "train": []}
    for n in (1, 2):
        res["extract"].append(bench_extract(manifest, a.out, n, a.base_width))
        print(json.dumps(res["extract"][-1]), flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import vp3d_synth  # noqa: E402  (test helper: VideoPose3D-format files)

    from poselift.datasets.importers.videopose3d import import_videopose3d

    takes = {s: {"Walking 1": 600, "Eating": 600} for s in ("S1", "S5")}
    (a.out / "h36m").mkdir(exist_ok=True)
    p3, p2 = vp3d_synth.h36m_files(a.out / "h36m", takes)
    rep = import_videopose3d(p3, [p2], "h36m", a.out / "h36m" / "caches")
    for n in (1, 2):
        res["train"].append(bench_train(rep.gt_path, rep.keypoint_paths["gt"], a.out, n, a.channels))
        print(json.dumps(res["train"][-1]), flush=True)
    (a.out / "scaling.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
