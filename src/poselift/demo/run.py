"""``poselift-demo``: the whole pipeline on a synthetic dataset, on CPU, with no downloads.

1. procedural H36M-17 motion (3 subjects x 5 motions) seen by several cameras,
   rendered to real video files;
2. the extraction stage over those videos: person crops -> ResNet-50 -> 2048-d features
   cache (the backbone is RANDOMLY INITIALISED: no pretrained weights can be had
   offline, so the features demonstrate the pipeline, not a trained representation);
3. 2D keypoints = projected ground truth + detector-like noise, written as a
   "precomputed detections" cache (the way VideoPose3D users bring CPN detections);
4. a VideoPose3D-style lifter trained from the caches (S1, S2), evaluated on the
   held-out subject S3 beside a constant mean-pose baseline; report with plots;
5. ``poselift infer`` on one held-out clip with that lifter (2D from the detections cache):
   a rendered MP4 and report.html.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


from poselift.core.progress import add_progress_flags, progress_mode

from .data import DemoSettings, build_demo_data

__all__ = ["main", "run_demo"]


def _extract(clips, root: Path, frame_step: int, batch_size: int, progress: bool) -> dict:
    """The real extraction stage over the rendered videos: annotation boxes -> square crops
    (TCMR contract: 224 px, ImageNet normalisation) -> ResNet-50 -> float16 features cache.
    The ResNet-50 is randomly initialised (seeded): no weights can be downloaded here."""
    from poselift.extract.backbones import BACKBONES
    from poselift.extract.contracts import CONTRACTS
    from poselift.extract.features import SequenceSpec, extract_features

    torch.manual_seed(0)
    backbone = BACKBONES["resnet50"]().eval()
    specs = []
    for c in clips:
        frames = np.arange(0, len(c.boxes), frame_step)
        specs.append(SequenceSpec(c.seq_id, c.video, c.boxes[frames], frames,
                                  {"subject": c.subject, "action": c.action, "camera": c.camera.name,
                                   "fps": 25.0 / frame_step, "video": c.video.name}))
    path = root / "features_resnet50.h5"
    res = extract_features(specs, path, backbone, CONTRACTS["tcmr-demo"], batch_size=batch_size,
                           weights_sha256="random-init:seed=0", extractor="resnet50",
                           dataset="poselift-demo", progress=progress)
    if res.failed:
        raise RuntimeError(f"feature extraction failed for {res.failed}")
    return {"path": str(path), "frames": res.frames, "frames_per_s": round(res.frames_per_second, 1),
            "written": len(res.written), "skipped": len(res.skipped)}


def _reset_if_settings_changed(data: Path, settings: dict) -> None:
    """Re-running the demo resumes its caches; with other settings it starts them afresh
    (the caches' headers would otherwise refuse the new inputs, as they should)."""
    marker = data / "settings.json"
    if data.exists() and (not marker.exists() or json.loads(marker.read_text()) != settings):
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings))


def _infer_clip(clips, det_path: Path, checkpoint: str, out: Path, progress: bool) -> dict:
    """``poselift infer`` on one held-out clip with the lifter just trained. Its 2D comes from the
    demo's detections cache: a randomly initialised detector would find no people."""
    from poselift.infer import InferOptions, run_infer

    clip = next(c for c in clips if c.subject == "S3")
    opts = InferOptions(lifter=str(checkpoint), keypoints=[str(det_path)], device="cpu", progress=progress,
                        render_height=256, overwrite=True)
    res = run_infer([str(clip.video)], out, opts)
    vid = clip.video.stem
    return {"infer_video": res["paths"][f"{vid}:mp4"], "infer_report": res["paths"]["report"],
            "infer_poses3d": res["paths"][f"{vid}:npz"]}


def _baseline_mpjpe_mm(train, test) -> float:
    """A constant mean pose (average root-relative training pose) for every test frame."""
    from poselift.evaluation import mpjpe
    from poselift.lifting.videopose3d.data import root_relative

    mean = np.concatenate([root_relative(train.sequence_targets(s)) for s in train.ids]).mean(0)
    errs = [mpjpe(np.broadcast_to(mean, (len(g), *mean.shape)), g)
            for g in (root_relative(test.sequence_targets(s)) for s in test.ids)]
    return float(np.concatenate(errs).mean() * 1000)


def run_demo(out: Path, *, epochs: int = 60, frames: int = 80, channels: int = 256,
             feature_step: int = 4, skip_features: bool = False, progress: bool = True) -> dict:
    from poselift.lifting.config import LiftConfig
    from poselift.lifting.videopose3d.data import LiftData
    from poselift.lifting.videopose3d.eval import evaluate_checkpoint
    from poselift.lifting.videopose3d.train import train_lifter

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    settings = DemoSettings(frames=frames)
    _reset_if_settings_changed(out / "data", {"settings": repr(settings), "feature_step": feature_step})
    t = time.perf_counter()
    clips, gt_path, det_path = build_demo_data(out / "data", settings, progress=progress)
    timings["render_and_caches_s"] = time.perf_counter() - t
    feat = None
    if not skip_features:
        t = time.perf_counter()
        feat = _extract(clips, out / "data", feature_step, 32, progress)
        timings["feature_extraction_s"] = time.perf_counter() - t
    cfg = LiftConfig(gt_cache=str(gt_path), keypoints_cache=str(det_path), train_subjects=["S1", "S2"],
                     test_subjects=["S3"], architecture=[3, 3, 3], channels=channels, dropout=0.25,
                     epochs=epochs, batch_size=64, lr=1e-3, lr_decay=0.95, eval_every=0,
                     checkpoint_every=0, seed=1234, out_dir=str(out / "lifter"), progress=progress)
    t = time.perf_counter()
    summary = train_lifter(cfg, resume=False)
    timings["training_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report, paths = evaluate_checkpoint(summary["checkpoint"], str(gt_path), str(det_path), ["S3"],
                                        out / "report", progress=False)
    timings["evaluation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    infer = _infer_clip(clips, det_path, summary["checkpoint"], out / "infer", progress)
    timings["infer_s"] = time.perf_counter() - t
    train = LiftData.open(str(gt_path), str(det_path), ["S1", "S2"])
    test = LiftData.open(str(gt_path), str(det_path), ["S3"])
    overall = report.overall()
    result = {
        "lifter_mpjpe_mm": overall["mpjpe"]["mean"],
        "lifter_p_mpjpe_mm": overall["p_mpjpe"]["mean"],
        "baseline_mean_pose_mpjpe_mm": _baseline_mpjpe_mm(train, test),
        "test_frames": overall["mpjpe"]["count"],
        "features": feat,
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.perf_counter() - t_start, 1),
        "outputs": {"gt_cache": str(gt_path), "detections_cache": str(det_path),
                    "videos": str(out / "data" / "videos"), "checkpoint": summary["checkpoint"], **paths,
                    **infer},
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _print(result: dict, out: Path) -> None:
    print("\n== poselift demo ==")
    print(f"{'model':<34}{'MPJPE (mm)':>12}")
    print(f"{'constant mean pose (baseline)':<34}{result['baseline_mean_pose_mpjpe_mm']:>12.1f}")
    print(f"{'temporal-conv lifter (27 frames)':<34}{result['lifter_mpjpe_mm']:>12.1f}")
    print(f"(held-out subject S3, {result['test_frames']} frames; lifter P-MPJPE "
          f"{result['lifter_p_mpjpe_mm']:.1f} mm)")
    if result["features"]:
        f = result["features"]
        print(f"features: {f.get('frames', '?')} crops -> {f.get('path', '?')} "
              f"(ResNet-50, RANDOMLY INITIALISED: no pretrained weights offline)")
    print("timings:", ", ".join(f"{k} {v}" for k, v in result["timings"].items()),
          f"| total {result['total_s']} s")
    print("outputs:")
    for k, v in result["outputs"].items():
        print(f"  {k:<22} {v}")
    print(f"  {'summary':<22} {out / 'demo_summary.json'}")
    print(f"poselift infer on a held-out clip: video {result['outputs']['infer_video']}, "
          f"report {result['outputs']['infer_report']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="poselift-demo",
        description="Run the whole poselift pipeline on a built-in synthetic dataset (CPU, offline): "
                    "render videos, extract ResNet-50 features into a cache, train a VideoPose3D-style "
                    "lifter from cached 2D detections, evaluate on a held-out subject and write a report.")
    p.add_argument("--out", type=Path, default=Path("poselift_demo"),
                   help="output folder for videos, caches, checkpoint and report (default: ./poselift_demo)")
    p.add_argument("--epochs", type=int, default=60, help="lifter training epochs (default 60)")
    p.add_argument("--frames", type=int, default=80, help="frames per clip at 25 fps (default 80)")
    p.add_argument("--channels", type=int, default=256, help="lifter width (default 256; the paper uses 1024)")
    p.add_argument("--feature-step", type=int, default=4,
                   help="extract features for every n-th video frame (default 4, to keep the demo within about 3 minutes on 2 CPU cores)")
    p.add_argument("--skip-features", action="store_true", help="skip the ResNet-50 feature extraction")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    add_progress_flags(p)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    result = run_demo(a.out, epochs=a.epochs, frames=a.frames, channels=a.channels,
                      feature_step=a.feature_step, skip_features=a.skip_features,
                      progress=progress_mode(a))
    _print(result, a.out)
    if result["lifter_mpjpe_mm"] >= result["baseline_mean_pose_mpjpe_mm"]:
        print("WARNING: the lifter did not beat the mean-pose baseline")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
