"""``poselift-extract``: run the extraction stage from the command line.

Subcommands:
  features  crops + backbone features for one video or a manifest of sequences -> features cache
  keypoints 2D keypoints (AlphaPose SIKR or FAMI-Pose) -> keypoints2d cache, one sequence per track
  probe     print frame count, fps and size of videos / image folders (what the extractor sees)
  train     train a 2D estimator (SIKR, SimCC, FAMI-Pose) from a YAML config (configs/pose2d/)

Manifest (JSON list, paths relative to the manifest file)::

    [{"seq_id": "S9/Walking/cam0", "source": "videos/S9_walk.mp4",
      "boxes": "boxes/S9_walk.npy", "box_format": "cxcywh",
      "frame_index": "boxes/S9_walk_frames.npy", "attrs": {"subject": "S9"}}, ...]

``box_format`` is one of xyxy, cxcywh (VideoPose3D/TCMR [cx, cy, w, h]), xywh (arrays in .npy, or
key ``boxes``/``bbox`` in .npz), coco (COCO detection JSON) or posetrack (PoseTrack JSON; give
``track_id``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence


from poselift.core.cli import Command, run_parsed
from poselift.core.cli import build_parser as build_subcommand_parser
from poselift.core.checkpoints import add_trust_flag
from poselift.core.device import resolve_device
from poselift.core.progress import add_progress_flags, progress_mode

from .manifest import load_manifest, log_failures, resolve_workers

log = logging.getLogger(__name__)

__all__ = ["main", "build_parser", "load_manifest"]


def _add_features(f: argparse.ArgumentParser) -> None:
    from .contracts import CONTRACTS

    f.add_argument("out", help="output cache file (.h5); an interrupted run with the same settings resumes")
    src = f.add_argument_group("inputs (give --manifest, or --video with --boxes)")
    src.add_argument("--manifest", help="JSON list of sequences (see `poselift-extract --help`)")
    src.add_argument("--video", help="one video file or image folder")
    src.add_argument("--boxes", help="box file for --video: .npy/.npz array, COCO or PoseTrack JSON")
    src.add_argument("--box-format", default="xyxy",
                     choices=["xyxy", "cxcywh", "xywh", "coco", "posetrack"],
                     help="layout of --boxes: xyxy corners, cxcywh = VideoPose3D/TCMR [cx,cy,w,h], "
                          "xywh = COCO [x,y,w,h], or a detection/tracking JSON (default: xyxy)")
    src.add_argument("--track-id", type=int, default=None,
                     help="PoseTrack: which track to extract (default: every track, ids <seq-id>/<track>)")
    src.add_argument("--seq-id", help="sequence id for --video (default: the file name without suffix)")
    src.add_argument("--min-score", type=float, default=0.0,
                     help="COCO detections: drop boxes scoring below this (default: 0)")
    src.add_argument("--image-id-offset", type=int, default=0,
                     help="COCO detections with integer image ids: frame = image_id - N (default 0). "
                          "PoseTrack18 ids are 1VVVVVVFFFF (video, frame), so N is the id of the "
                          "video's first frame, e.g. 10003420000")
    src.add_argument("--smooth", action="store_true",
                     help="smooth boxes over time like TCMR (median k=11, then Gaussian sigma=8)")
    src.add_argument("--dataset", default="custom", help="dataset name stored in the cache header")

    m = f.add_argument_group("model")
    m.add_argument("--backbone", default="resnet50",
                   help="variant from BACKBONES: resnet18/34/50/101/152 or hmr (default: resnet50)")
    m.add_argument("--weights", help="checkpoint file (torchvision .pth or SPIN/HMR .pth.tar) or a zoo "
                   "name (resnet50-imagenet-v1, spin-hmr; see `poselift weights list`)")
    m.add_argument("--weights-format", default="auto", choices=["auto", "torchvision", "spin"],
                   help="checkpoint layout; auto = spin if it holds {'model': ...} with an HMR "
                        "regressor, else torchvision (default: auto)")
    add_trust_flag(m, "--weights")
    m.add_argument("--random-init", action="store_true",
                   help="no weights: seeded random backbone, for smoke tests (recorded in the cache)")
    m.add_argument("--seed", type=int, default=0, help="seed for --random-init (default: 0)")
    m.add_argument("--base-width", type=int, default=64,
                   help="--random-init only: stem width (64 = real size; smaller for quick tests)")

    c = f.add_argument_group("preprocessing")
    c.add_argument("--preset", choices=sorted(CONTRACTS),
                   help="named reference contract (sets the bbox scale; TCMR 3DPW = 1.3, VIBE = 1.2)")
    c.add_argument("--bbox-scale", type=float, default=None,
                   help="square side = max(w, h) x this (default: the preset's, else 1.0)")
    c.add_argument("--crop-size", type=int, default=224, help="crop side in pixels (default: 224)")

    r = f.add_argument_group("runtime")
    r.add_argument("--batch-size", type=int, default=32, help="frames per backbone call (default: 32)")
    r.add_argument("--workers", type=int, default=None,
                   help="decode/crop worker processes (default: 0 = in-process when the model runs on "
                        "the CPU, where workers would take cores from it; min(8, cores - 1) on CUDA)")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    r.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help="stored feature dtype (default: float16, half the disk)")
    r.add_argument("--compile", action="store_true", help="torch.compile the backbone (eager fallback)")
    r.add_argument("--no-amp", action="store_true", help="CUDA: run in float32 instead of fp16 autocast")
    r.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "auto"],
                   help="backbone precision, replaces --no-amp (bf16: CPU autocast, ~2x on AVX512-BF16)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads in the main process")
    r.add_argument("--overwrite", action="store_true",
                   help="discard an existing cache or interrupted run made with other settings")
    add_progress_flags(r)


def _add_probe(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("paths", nargs="+", help="video files or image folders")


def _commands() -> dict[str, Command]:
    # imported here: the keypoint and training CLIs pull in their estimators, which `features`
    # and `probe` do not need
    from .cli_keypoints import KEYPOINTS_DESCRIPTION, KEYPOINTS_HELP, add_keypoints_arguments, run_keypoints
    from .training.cli import TRAIN_DESCRIPTION, TRAIN_HELP, add_train_arguments, run_train

    plain = argparse.HelpFormatter
    return {
        "features": (_add_features, _features, "extract backbone features into a features cache",
                     {"description": "Decode + crop in workers, run the backbone in batches, stream "
                                     "every sequence into OUT (resumable: re-running skips finished "
                                     "sequences). Exit status: 0 all written, 1 some sequences failed "
                                     "(listed), 2 bad input.",
                      "epilog": __doc__[__doc__.index("Manifest"):]}),
        "keypoints": (add_keypoints_arguments, run_keypoints, KEYPOINTS_HELP,
                      {"description": KEYPOINTS_DESCRIPTION, "formatter_class": plain}),
        "train": (add_train_arguments, run_train, TRAIN_HELP,
                  {"description": TRAIN_DESCRIPTION, "formatter_class": plain}),
        "probe": (_add_probe, _probe, "print frame count, fps and size of videos or image folders",
                  {"description": None, "formatter_class": plain}),
    }


def build_parser() -> argparse.ArgumentParser:
    return build_subcommand_parser("poselift-extract", __doc__, _commands(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   full_description=True)


def specs_from_args(a: argparse.Namespace, failed: dict[str, str] | None = None) -> list:
    """SequenceSpecs from ``--manifest`` or ``--video`` + ``--boxes``; entries that cannot be
    read go to ``failed`` (see :func:`load_manifest`)."""
    kw = dict(smooth=a.smooth, min_score=a.min_score,
              image_id_offset=getattr(a, "image_id_offset", 0), failed=failed)
    if a.manifest:
        mp = Path(a.manifest)
        try:
            entries = json.loads(mp.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mp}: not valid JSON ({e})") from None
        return load_manifest(entries, mp.parent, **kw)
    if a.video and a.boxes:
        entry = {"seq_id": a.seq_id or Path(a.video).stem, "source": a.video, "boxes": a.boxes,
                 "box_format": a.box_format, "track_id": a.track_id}
        return load_manifest([entry], Path("."), **kw)
    raise ValueError("give --manifest, or --video together with --boxes")


def contract_from_args(a: argparse.Namespace):
    """The feature crop contract: a preset (``--preset``) with --crop-size/--bbox-scale applied."""
    from .contracts import CONTRACTS, PreprocessContract

    base = CONTRACTS[a.preset] if a.preset else PreprocessContract()
    return PreprocessContract(**{**base.to_dict(), "crop_size": a.crop_size,
                                 "bbox_scale": a.bbox_scale or base.bbox_scale,
                                 "mean": base.mean, "std": base.std, "supporting_frames": ()})


def load_backbone(a: argparse.Namespace):
    """The backbone and its weights id (file sha256 or 'random-init:seed=N') from CLI options."""
    import torch

    from .backbones import BACKBONES, file_sha256, load_checkpoint, load_spin_backbone, load_torchvision_resnet

    if a.backbone not in BACKBONES:
        raise ValueError(f"unknown --backbone {a.backbone!r}; choose from {sorted(BACKBONES)}")
    if a.weights is None:
        if not a.random_init:
            raise ValueError("give --weights CHECKPOINT, or --random-init for an untrained backbone")
        torch.manual_seed(a.seed)
        return BACKBONES[a.backbone](base_width=a.base_width), f"random-init:seed={a.seed}"
    from poselift.zoo import resolve_weights, weights_name

    zoo_name = weights_name(a.weights)  # recorded in the cache's provenance beside the sha256
    a.weights = str(resolve_weights(a.weights))
    obj = load_checkpoint(a.weights, trust=a.trust_checkpoint)
    fmt = a.weights_format
    if fmt == "auto":
        inner = obj.get("model") if isinstance(obj, dict) else None
        fmt = "spin" if isinstance(inner, dict) and "decpose.weight" in inner else "torchvision"
    model = (load_spin_backbone(obj) if fmt == "spin" else
             load_torchvision_resnet(obj, strict=True))
    want = 50 if a.backbone == "hmr" else int(a.backbone.removeprefix("resnet"))
    if want != model.depth:
        raise ValueError(f"{a.weights}: holds a ResNet-{model.depth}, but --backbone is {a.backbone}")
    sha = file_sha256(a.weights)
    model.load_info.update(source=a.weights, sha256=sha, **({"weights_name": zoo_name} if zoo_name else {}))
    return model, sha


def _features(a: argparse.Namespace) -> int:
    import torch

    from .features import extract_features

    if a.threads:
        torch.set_num_threads(a.threads)
    failed: dict[str, str] = {}  # per-sequence input failures: logged once, counted, rc 1
    specs = specs_from_args(a, failed)
    log_failures(failed)
    contract = contract_from_args(a)
    model, sha = load_backbone(a)
    device = str(resolve_device(a.device))
    if not specs:
        print(f"{a.out}: nothing to extract; failed {len(failed)}")
        return 1
    res = extract_features(specs, a.out, model, contract, batch_size=a.batch_size,
                           num_workers=resolve_workers(a.workers, device),
                           device=device, dtype=a.dtype, weights_sha256=sha,
                           extractor="hmr" if a.backbone == "hmr" else None, dataset=a.dataset,
                           compile=a.compile, amp=not a.no_amp, overwrite=a.overwrite,
                           progress=progress_mode(a), precision=a.precision)
    failed.update(res.failed)  # each failure was logged once where it happened
    print(f"{a.out}: wrote {len(res.written)}, skipped {len(res.skipped)} (already cached), "
          f"failed {len(failed)}; {res.frames} frames of written sequences ({res.invalid_frames} "
          f"without a usable box) in {res.seconds:.1f} s = {res.frames_per_second:.1f} frames/s")
    return 1 if failed else 0


def _probe(a: argparse.Namespace) -> int:
    from .video import VideoError, open_source

    rc = 0
    for p in a.paths:
        try:
            s = open_source(p)
            print(f"{p}: {s.num_frames} frames, {s.fps:g} fps, {s.size[0]}x{s.size[1]}")
        except VideoError as e:
            print(f"{p}: ERROR {e}", file=sys.stderr)
            rc = 1
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_parsed("poselift-extract", build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
