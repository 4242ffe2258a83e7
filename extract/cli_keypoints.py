"""``poselift-extract keypoints``: 2D keypoints (SIKR, SimCC or FAMI-Pose) into a keypoints2d cache.

Manifest entries are those of ``features``; ``box_format`` coco / posetrack means several
boxes per frame (a COCO detection JSON, or PoseTrack JSON with track ids; a PoseTrack entry
with ``track_id`` extracts that track only). Array box files are one person per sequence.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from poselift.core.checkpoints import add_trust_flag
from poselift.core.device import resolve_device
from poselift.core.progress import add_progress_flags, progress_mode

__all__ = ["KEYPOINTS_HELP", "KEYPOINTS_DESCRIPTION", "add_keypoints_arguments", "run_keypoints",
           "load_keypoint_manifest"]


KEYPOINTS_HELP = "2D keypoints (SIKR / FAMI-Pose) into a keypoints2d cache"
KEYPOINTS_DESCRIPTION = ("Decode + crop in workers, batched estimator, pose NMS + tracks for several "
                         "boxes per frame, one cache sequence per person track (<video>/track<k>). "
                         "Resumable. Exit status: 0 ok, 1 some videos failed, 2 bad input.")


def add_keypoints_arguments(k: argparse.ArgumentParser) -> None:
    """The options of ``poselift-extract keypoints``."""
    k.add_argument("out", help="output cache file (.h5)")
    k.add_argument("--results-json", metavar="PATH",
                   help="also write the whole cache as AlphaPose result JSON (image_id '<frame>.jpg', "
                        "keypoints, score, box, idx), the format `poselift-evaluate keypoints` reads")
    src = k.add_argument_group("inputs (give --manifest, or --video with --boxes)")
    src.add_argument("--manifest", help="JSON list of sequences (see `poselift-extract features --help`)")
    src.add_argument("--video", help="one video file or image folder")
    src.add_argument("--boxes", help="boxes for --video: .npy/.npz array, COCO detection or PoseTrack JSON")
    src.add_argument("--box-format", default="coco", choices=["xyxy", "cxcywh", "xywh", "coco", "posetrack"],
                     help="layout of --boxes (default: coco = every person box of a detection JSON)")
    src.add_argument("--track-id", type=int, default=None, help="PoseTrack: extract only this track")
    src.add_argument("--seq-id", help="id for --video (default: the file name without suffix)")
    src.add_argument("--min-score", type=float, default=0.0, help="drop detections scoring below this")
    src.add_argument("--image-id-offset", type=int, default=0,
                     help="COCO detections with integer image ids: frame = image_id - N (default 0). "
                          "PoseTrack18 ids are 1VVVVVVFFFF (video, frame), so N is the id of the "
                          "video's first frame, e.g. 10003420000")
    src.add_argument("--dataset", default="custom", help="dataset name stored in the cache header")
    m = k.add_argument_group("estimator")
    m.add_argument("--estimator", required=True, choices=["sikr", "simcc", "famipose"],
                   help="sikr: AlphaPose FastPose with integral regression; simcc: HRNet + SimCC coordinate "
                        "classification; famipose: HRNet + FAMI-Pose head with supporting frames")
    m.add_argument("--weights", required=True, help="AlphaPose FastPose .pth, SimCC weights (poselift-train "
                   "model_best.pth, leeyegy/SimCC or MMPose layout) or FAMI-Pose epoch_N_state.pth, or a zoo name "
                   "(alphapose-fastpose-coco17; see `poselift weights list`)")
    add_trust_flag(m, "--weights")
    m.add_argument("--fami-config", default="release", choices=["release", "paper"],
                   help="FAMI head variant (release: translation GTM, raw masks; paper: affine, sigmoid)")
    m.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="override the crop size (default 256 192 for SIKR and SimCC, 384 288 for FAMI-Pose)")
    m.add_argument("--flip-test", action="store_true", help="SIKR / SimCC: average with the mirrored crop")
    m.add_argument("--pose-nms", default="auto", choices=["auto", "body", "fullbody", "off"],
                   help="SIKR P-NMS parameters (auto: fullbody for 133/136 keypoints, off for simcc, whose "
                        "softmax scores are not on AlphaPose's scale); always off when the boxes carry track ids")
    m.add_argument("--min-box-area", type=float, default=0.0, help="P-NMS: drop smaller poses")
    m.add_argument("--tube-length", type=int, default=1,
                   help="FAMI: key frames sharing one crop box and backbone features (1 = reference)")
    m.add_argument("--tracker-iou", type=float, default=0.3, help="IoU tracker match threshold")
    m.add_argument("--tracker-max-age", type=int, default=30, help="frames a lost track survives")
    r = k.add_argument_group("runtime")
    r.add_argument("--batch-size", type=int, default=32, help="crops per model call (default 32)")
    r.add_argument("--workers", type=int, default=None,
                   help="decode/crop worker processes (default: 0 on CPU, min(8, cores - 1) on CUDA)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--no-amp", action="store_true", help="CUDA: float32 instead of fp16 autocast")
    r.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "auto"],
                   help="estimator precision, replaces --no-amp (bf16: CPU autocast on AVX512-BF16/AMX); "
                        "recorded in the cache header")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads in the main process")
    r.add_argument("--overwrite", action="store_true", help="discard an existing cache / interrupted run")
    add_progress_flags(r)


def _entry_jobs(e: dict[str, Any], base: Path, min_score: float, image_id_offset: int = 0) -> list:
    from .manifest import load_manifest
    from .detections import detections_from_tracks, load_coco_frames, load_posetrack_frames
    from .video import open_source

    for f in ("seq_id", "source", "boxes"):
        if f not in e:
            raise ValueError(f"manifest entry {e.get('seq_id', '?')}: missing field {f!r}")
    fmt = e.get("box_format", "xyxy")
    if fmt not in ("coco", "posetrack") or e.get("track_id") is not None:
        return load_manifest([e], base, min_score=min_score, image_id_offset=image_id_offset)
    source = str(base / e["source"])
    n = len(open_source(source))
    if fmt == "coco":
        fr, bx, sc = load_coco_frames(base / e["boxes"], n, min_score=min_score,
                                      image_id_offset=image_id_offset)
        tid = None
    else:
        fr, bx, sc, tid = load_posetrack_frames(base / e["boxes"], n)
    return [detections_from_tracks(e["seq_id"], source, n, fr, bx, sc, tid, e.get("attrs"))]


def load_keypoint_manifest(entries: Sequence[dict[str, Any]], base: Path, min_score: float = 0.0,
                           image_id_offset: int = 0, failed: dict[str, str] | None = None) -> list:
    """Manifest entries -> SequenceSpec (one person) / VideoDetections (several boxes) list.
    With ``failed`` given, an entry whose inputs cannot be read is recorded there
    (``seq_id -> message``) and the others go on; without it, it raises."""
    if not isinstance(entries, list):
        raise ValueError("the manifest must be a JSON list of sequence entries")
    jobs = []
    for k, e in enumerate(entries):
        if failed is None or not isinstance(e, dict) or "seq_id" not in e:
            jobs += _entry_jobs(e, base, min_score, image_id_offset)
            continue
        try:
            jobs += _entry_jobs(e, base, min_score, image_id_offset)
        except Exception as exc:  # noqa: BLE001 - one bad input fails only its own sequence
            if isinstance(exc, (KeyboardInterrupt, MemoryError)):
                raise
            msg = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
            failed[str(e["seq_id"])] = f"manifest entry {k}: {msg}"
    return jobs


def _load_estimator(a: argparse.Namespace):
    from poselift.zoo import resolve_weights, weights_name

    from .backbones import file_sha256
    from .estimators.contracts import famipose_contract, fastpose_contract

    zoo_name = weights_name(a.weights)
    a.weights = str(resolve_weights(a.weights))

    over = {"input_size": tuple(a.input_size)} if a.input_size else {}
    if a.estimator == "sikr":
        from .estimators.fastpose import load_alphapose

        model = load_alphapose(a.weights, trust=a.trust_checkpoint)
        contract = fastpose_contract(**over)
    elif a.estimator == "simcc":
        from .contracts import simcc_contract
        from .estimators.simcc_model import load_simcc

        model = load_simcc(a.weights, tuple(a.input_size) if a.input_size else (256, 192), trust=a.trust_checkpoint)
        contract = simcc_contract(model.split_ratio, **over)
    else:
        from .estimators.famipose import PAPER, RELEASE, load_famipose

        contract = famipose_contract(**over)
        cfg = dataclasses.replace(PAPER if a.fami_config == "paper" else RELEASE,
                                  feature_size=contract.heatmap_size)
        model = load_famipose(a.weights, cfg, trust=a.trust_checkpoint)
    model.zoo_name = zoo_name  # extract_keypoints records it in the cache's provenance
    return model, contract, file_sha256(a.weights)


def run_keypoints(a: argparse.Namespace) -> int:
    import torch

    from .manifest import log_failures, resolve_workers
    from .estimators.pose_nms import PoseNMSParams
    from .keypoints import extract_keypoints

    if a.threads:
        torch.set_num_threads(a.threads)
    failed: dict[str, str] = {}  # per-sequence input failures: logged once, counted, rc 1
    if a.manifest:
        mp = Path(a.manifest)
        jobs = load_keypoint_manifest(json.loads(mp.read_text()), mp.parent, a.min_score,
                                      a.image_id_offset, failed)
    elif a.video and a.boxes:
        e = {"seq_id": a.seq_id or Path(a.video).stem, "source": a.video, "boxes": a.boxes,
             "box_format": a.box_format, "track_id": a.track_id}
        jobs = load_keypoint_manifest([e], Path("."), a.min_score, a.image_id_offset, failed)
    else:
        raise ValueError("give --manifest, or --video together with --boxes")
    log_failures(failed)
    if not jobs:
        print(f"{a.out}: nothing to extract; failed {len(failed)}")
        return 1
    model, contract, sha = _load_estimator(a)
    k = int(model.num_joints)
    # auto: no P-NMS for SimCC. AlphaPose's thresholds (e.g. a pose survives only with a keypoint
    # score >= 0.3) are tuned on SIKR / heatmap confidences; a SimCC score is a softmax peak over
    # the bins, and one trained on Gaussian labels of sigma 6 bins peaks near 1/(6 sqrt(2 pi)) = 0.07.
    auto = "off" if a.estimator == "simcc" else "fullbody" if k in (133, 136) else "body"
    nms = a.pose_nms if a.pose_nms != "auto" else auto
    params = PoseNMSParams.fullbody_regression() if nms == "fullbody" else PoseNMSParams()
    device = str(resolve_device(a.device))
    res = extract_keypoints(jobs, a.out, model, contract, batch_size=a.batch_size,
                            num_workers=resolve_workers(a.workers, device),
                            device=device, amp=not a.no_amp, flip_test=a.flip_test, nms_params=params,
                            use_pose_nms=nms != "off", min_box_area=a.min_box_area,
                            tracker_iou=a.tracker_iou, tracker_max_age=a.tracker_max_age,
                            tube_length=a.tube_length, weights_sha256=sha, dataset=a.dataset,
                            overwrite=a.overwrite, progress=progress_mode(a), precision=a.precision)
    failed.update(res.failed)  # each failure was logged once where it happened
    print(f"{a.out}: wrote {len(res.written)} sequences, skipped {len(res.skipped)}, failed "
          f"{len(failed)}, no person in {len(res.empty)}; {res.frames} frames of written sequences "
          f"in {res.seconds:.1f} s = {res.frames_per_second:.1f} frames/s")
    if a.results_json and Path(a.out).exists():
        from .results_json import write_alphapose_results

        n = write_alphapose_results(a.out, a.results_json)
        print(f"{a.results_json}: {n} AlphaPose result entries")
    return 1 if failed else 0
