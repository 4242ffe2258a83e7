"""``poselift infer VIDEO_OR_FOLDER... --out DIR`` (also ``poselift-infer``).

Exit status: 0 done (also when no person was found: the outputs say so), 2 bad input
(one ``poselift infer: error: ...`` line).
"""
from __future__ import annotations

import argparse
import logging
from typing import Sequence

from poselift.core.cli import run_guarded
from poselift.core.progress import add_progress_flags, progress_mode

from .pipeline import InferOptions, run_infer

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="poselift infer",
        description="One command from a video to a 3D result: person detection (YOLOX), tracking, 2D pose "
                    "(SIKR / FAMI-Pose), lifting per track with VideoPose3D's in-the-wild conventions, a "
                    "rendered MP4 and report.html. Every stage is cached in --out, so a re-run resumes and "
                    "changing only the lifter reuses the detections and the 2D keypoints.")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FOLDER",
                   help="video files, folders of videos, or image folders (one video each)")
    p.add_argument("--out", required=True, help="output folder (caches, results, render, report.html)")
    g = p.add_argument_group("stages")
    g.add_argument("--lifter", required=True,
                   help="VideoPose3D .bin (e.g. pretrained_h36m_detectron_coco.bin) or poselift lifter checkpoint")
    g.add_argument("--lifter-joints-in", help="lifter input joint set (default: stored, else coco17 for 17 joints)")
    g.add_argument("--lifter-joints-out", help="lifter output joint set (default: stored, else h36m17 for 17 joints)")
    g.add_argument("--detector", help="YOLOX checkpoint (official {'model': state_dict} .pth)")
    g.add_argument("--detector-size", type=int, help="YOLOX letterbox size (default: 416 nano/tiny, 640 others)")
    g.add_argument("--det-conf", type=float, default=0.25, help="YOLOX score threshold (default 0.25)")
    g.add_argument("--det-nms", type=float, default=0.45, help="YOLOX NMS IoU threshold (default 0.45)")
    g.add_argument("--estimator", default="sikr", choices=["sikr", "simcc", "famipose"],
                   help="2D estimator run on the tracked boxes (default sikr)")
    g.add_argument("--estimator-weights", help="AlphaPose FastPose .pth (sikr), SimCC weights (simcc) or FAMI-Pose state (famipose)")
    g.add_argument("--estimator-input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="override the 2D crop size (default 256 192 for sikr and simcc, 384 288 for famipose)")
    g.add_argument("--keypoints", nargs="+", default=[], metavar="FILE",
                   help="skip detection and 2D: AlphaPose result JSON or COCO keypoint JSON (one per video, "
                        "in input order), or one poselift keypoints2d cache (.h5)")
    g.add_argument("--single-person", action="store_true",
                   help="VideoPose3D's rule: the best-scoring person of each frame forms one track")
    g.add_argument("--track-min-hits", type=int, default=3,
                   help="tracker birth: matched detections before a track gets an id (default 3)")
    g.add_argument("--track-max-age", type=int, default=30,
                   help="tracker death: frames a track may go unmatched before it ends (default 30)")
    g.add_argument("--track-max-gap", type=int, default=10,
                   help="tracker: longest run of missed frames bridged inside one track (default 10)")
    g.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation in the lifter")
    t = p.add_argument_group("meshes (optional TCMR stage)")
    t.add_argument("--tcmr", metavar="CHECKPOINT",
                   help="TCMR model: released .pth.tar, poselift TCMR checkpoint or zoo name; adds SMPL meshes "
                        "(tcmr_output.pkl) and overlays them on the render")
    t.add_argument("--body-model-dir", help="folder with the SMPL neutral model and regressors (for --tcmr)")
    t.add_argument("--features-backbone", default="hmr", choices=["hmr", "resnet50"],
                   help="backbone the TCMR model's features came from (default hmr)")
    t.add_argument("--features-weights", help="its checkpoint (SPIN/HMR or torchvision ResNet-50 .pth, or zoo name)")
    r = p.add_argument_group("render")
    r.add_argument("--no-render", action="store_true", help="skip the MP4")
    r.add_argument("--max-panels", type=int, default=4, help="3D panels in the render (longest tracks first)")
    r.add_argument("--render-height", type=int, default=360, help="render height in pixels (default 360)")
    x = p.add_argument_group("runtime")
    x.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    x.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    x.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "auto"],
                   help="forward precision of every network (default: fp16 autocast on CUDA for the "
                        "detector / 2D / features, float32 elsewhere; bf16 = CPU autocast on "
                        "AVX512-BF16/AMX, ~2x faster there); part of each stage's key in run.json, "
                        "recorded in the caches and report.html")
    x.add_argument("--overwrite", action="store_true", help="empty an output folder made for other inputs")
    x.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of the checkpoints (runs code from the files: trusted files only)")
    add_progress_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="poselift infer: %(message)s")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    o = InferOptions(lifter=a.lifter, detector=a.detector, detector_size=a.detector_size, det_conf=a.det_conf,
                     det_nms=a.det_nms, estimator=a.estimator, estimator_weights=a.estimator_weights,
                     estimator_input_size=tuple(a.estimator_input_size) if a.estimator_input_size else None,
                     keypoints=list(a.keypoints), lifter_joints_in=a.lifter_joints_in,
                     lifter_joints_out=a.lifter_joints_out, single_person=a.single_person,
                     track_min_hits=a.track_min_hits, track_max_age=a.track_max_age,
                     track_max_gap=a.track_max_gap, flip=not a.no_flip,
                     render=not a.no_render, max_panels=a.max_panels, render_height=a.render_height,
                     tcmr=a.tcmr, body_model_dir=a.body_model_dir, features_backbone=a.features_backbone,
                     features_weights=a.features_weights,
                     device=a.device, overwrite=a.overwrite, trust_checkpoint=a.trust_checkpoint,
                     progress=progress_mode(a), precision=a.precision)

    def run() -> int:
        print(summary_line(run_infer(a.inputs, a.out, o)))
        return 0

    return run_guarded("poselift infer", run)  # a user error: one "error:" line, exit 2


def summary_line(res: dict) -> str:
    """One line: tracks, the report, the renders and the result files."""
    p = res["paths"]
    mp4 = [v for k, v in p.items() if k.endswith(":mp4")]
    npz = [v for k, v in p.items() if k.endswith(":npz")]
    return (f"poselift infer: {res['tracks']} track(s) in {res['timings'].get('total_s', 0):.1f} s; "
            f"report {p['report']}; render {', '.join(mp4) or '-'}; 3D {', '.join(npz)}")


if __name__ == "__main__":
    raise SystemExit(main())
