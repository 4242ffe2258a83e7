"""2D keypoint extraction into a ``keypoints2d`` cache: videos + person boxes -> SIKR / FAMI-Pose.

Work split as in feature extraction: DataLoader workers decode and crop
(:mod:`.keypoint_stream`), the main process runs the batched model and decodes on the device
(:mod:`.keypoint_runners`), and every output sequence streams into the cache
(``begin_sequence`` -> ``append`` -> ``commit``); memory is bounded by a chunk of crops.

Inputs are ``SequenceSpec`` (one person, one box per frame: the sequence keeps its id and every
frame) or :class:`~.detections.VideoDetections` (several boxes per frame). For several boxes:

* SIKR: per frame the estimator runs on every box, then parametric pose NMS (explicit
  ``PoseNMSParams``; skipped when the boxes carry track ids, as AlphaPose does with
  ``--pose_track``), then survivors get track ids (the file's, else :class:`IoUTracker` on the
  survivors' detector boxes). One sequence per track, ``<video>/track<k>``, running from the
  track's first to its last frame; frames in between without the person are ``valid=False``.
* FAMI-Pose needs person tubes before the estimator (supporting frames are cropped with the key
  frame's box), so boxes are tracked first (file ids or the IoU tracker, no pose NMS), then each
  tube runs as one sequence; ``tube_length > 1`` shares backbone features inside a window.

Per frame the cache stores ``keypoints`` (T, K, 2) image px (pixel-index convention, no +0.5),
``scores`` (T, K) (SIKR max-sigmoid / FAMI heatmap peak: not comparable across estimators),
``boxes`` (T, 4) detector xyxy, ``crop_boxes`` (T, 4) the region the model saw (re-decoding
needs it), ``proposal_score`` (T,) AlphaPose's mean + box score + 1.25 max, ``track_id`` (T,),
``valid`` (T,), ``frame_index`` (T,). Invalid frames hold zeros and NaN boxes.
A failing video is reported and the others continue; a re-run skips finished sequences
(a multi-person SIKR video counts as finished once any of its tracks is in the cache: its
tracks are committed together at the end of the video).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from poselift.core.precision import precision_record
from poselift.core.progress import progress_bar

from poselift.datasets.cache import CacheHeader, CacheWriter
from poselift.datasets.joints import get_joint_set

from .contracts import PreprocessContract, simcc_contract
from .detections import IoUTracker, VideoDetections, split_tracks
from .estimators.contracts import famipose_contract, fastpose_contract
from .estimators.famipose import FAMIPose
from .estimators.pose_nms import PoseNMSParams, pose_nms
from .features import ExtractionResult, SequenceSpec, _worker_init, feed_sha256
from .estimators.simcc_model import SimCCPose
from .keypoint_runners import FamiRunner, SikrRunner, SimccRunner
from .keypoint_stream import DetectionCropStream, TubeCropStream, TubeSpec

__all__ = ["KeypointResult", "extract_keypoints", "joint_set_for", "detections_fingerprint",
           "detection_fingerprints"]

log = logging.getLogger(__name__)
_BY_K = {17: "coco17", 26: "halpe26", 136: "halpe136"}


@dataclass
class KeypointResult(ExtractionResult):
    """``ExtractionResult`` plus ``empty``: videos in which no person survived."""

    empty: list[str] = field(default_factory=list)


def joint_set_for(num_joints: int, contract: PreprocessContract) -> str:
    """Joint set name for K outputs: the contract's when it has K joints, else by K."""
    if contract.joint_set and get_joint_set(contract.joint_set).num_joints == num_joints:
        return contract.joint_set
    if num_joints not in _BY_K:
        raise ValueError(f"no joint set known for {num_joints} keypoints (known: {sorted(_BY_K)})")
    return _BY_K[num_joints]


def _as_jobs(sequences: Sequence[SequenceSpec | VideoDetections]) -> list[VideoDetections]:
    jobs = [s if isinstance(s, VideoDetections) else
            VideoDetections.from_single(s.seq_id, s.source, s.boxes, s.frame_index, s.attrs)
            for s in sequences]
    ids = [j.video_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate sequence/video ids {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    return jobs


def detections_fingerprint(jobs: Sequence[VideoDetections]) -> str:
    """sha256 over ids, source file name and size, frames, boxes, scores and track ids."""
    return feed_sha256(sorted(jobs, key=lambda j: j.video_id), _feed_job)


def detection_fingerprints(jobs: Sequence[VideoDetections]) -> dict[str, str]:
    """Per video id, the sha256 of what ``detections_fingerprint`` hashes for it: a resume
    re-does the sequences (``<video>`` or ``<video>/track<k>``) of changed videos only."""
    return {j.video_id: feed_sha256([j], _feed_job) for j in jobs}


def _feed_job(h: Any, j: VideoDetections) -> None:
    p = Path(j.source)
    h.update(f"{j.video_id}|{p.name}|{p.stat().st_size if p.is_file() else -1}|{j.single}|".encode())
    for a in (j.frame_index, j.det_pos, j.boxes, j.scores, j.track_ids):
        h.update(np.ascontiguousarray(a).tobytes())


class _TrackOut:
    """Rows of one output sequence, buffered per chunk and streamed into the writer."""

    def __init__(self, writer: CacheWriter, seq_id: str, attrs: dict[str, Any], frame_index: np.ndarray,
                 start: int, k: int, track_id: int, flush_rows: int) -> None:
        self.writer, self.seq_id, self.attrs = writer, seq_id, attrs
        self.frame_index, self.next_pos, self.k, self.tid = frame_index, start, k, track_id
        self.flush_rows = flush_rows
        self.rows: dict[str, list] = {n: [] for n in ("keypoints", "scores", "boxes", "crop_boxes",
                                                       "proposal_score", "valid", "frame_index", "track_id")}
        self.stream: Any = None
        self.n = 0
        self.n_invalid = 0

    def _row(self, pos: int, kp: np.ndarray, sc: np.ndarray, box: np.ndarray, cbox: np.ndarray,
             ps: float, valid: bool) -> None:
        r = self.rows
        r["keypoints"].append(kp)
        r["scores"].append(sc)
        r["boxes"].append(box)
        r["crop_boxes"].append(cbox)
        r["proposal_score"].append(ps)
        r["valid"].append(valid)
        self.n_invalid += not valid
        r["frame_index"].append(self.frame_index[pos])
        r["track_id"].append(self.tid)
        self.next_pos = pos + 1
        if len(r["valid"]) >= self.flush_rows:
            self.flush()

    def pad_to(self, pos: int) -> None:
        """Invalid rows for the positions before ``pos`` not written yet."""
        z, nan = np.zeros((self.k, 2), np.float32), np.full(4, np.nan, np.float32)
        for p in range(self.next_pos, pos):
            self._row(p, z, z[:, 0], nan, nan, 0.0, False)

    def put(self, pos: int, kp: np.ndarray, sc: np.ndarray, box: np.ndarray, cbox: np.ndarray,
            ps: float, valid: bool = True) -> None:
        self.pad_to(pos)
        self._row(pos, kp, sc, box, cbox, ps, valid)

    def flush(self) -> None:
        if not self.rows["valid"]:
            return
        if self.stream is None:
            self.stream = self.writer.begin_sequence(self.seq_id, self.attrs)
        dt = {"keypoints": np.float32, "scores": np.float32, "boxes": np.float32, "crop_boxes": np.float32,
              "proposal_score": np.float32, "valid": bool, "frame_index": np.int64, "track_id": np.int64}
        self.stream.append({n: np.asarray(v, dt[n]) for n, v in self.rows.items()})
        self.n += len(self.rows["valid"])
        self.rows = {n: [] for n in self.rows}

    def commit(self) -> None:
        self.flush()
        self.stream.commit()

    def abort(self) -> None:
        if self.stream is not None:
            self.stream.abort()


def extract_keypoints(sequences: Sequence[SequenceSpec | VideoDetections], out_path: str | os.PathLike,
                      estimator: nn.Module, contract: PreprocessContract | None = None, *,
                      batch_size: int = 32, num_workers: int = 0, device: str | torch.device = "cpu",
                      amp: bool = True, flip_test: bool = False,
                      nms_params: PoseNMSParams | None = None, use_pose_nms: bool = True,
                      min_box_area: float = 0.0, tracker_iou: float = 0.3, tracker_max_age: int = 30,
                      tube_length: int = 1, weights_sha256: str | None = None, extractor: str | None = None,
                      dataset: str = "custom", fingerprint: str | None = None, overwrite: bool = False,
                      progress: bool = True, precision: str | None = None) -> KeypointResult:
    """Run a 2D estimator over videos into the ``keypoints2d`` cache ``out_path``.

    Args:
        sequences: ``SequenceSpec`` (single person) and/or ``VideoDetections`` (several boxes).
        estimator: a ``FastPose`` (SIKR decode), a ``SimCCPose`` (SimCC argmax; runs the SIKR
            path: per-box crops, pose NMS, tracks) or a ``FAMIPose``.
        contract: crop/normalisation contract (default: the estimator's reference preset).
        batch_size: boxes (SIKR) / key frames (FAMI) per chunk and model call.
        num_workers: DataLoader workers for decode + crop (0 = main process).
        flip_test: SIKR / SimCC only, average raw logits with the flipped-back mirror crop.
        nms_params, use_pose_nms, min_box_area: SIKR multi-person pose NMS (default body
            parameters; pass ``PoseNMSParams.fullbody_regression()`` for 136-point SIKR).
        tracker_iou, tracker_max_age: :class:`IoUTracker` for boxes without track ids.
        tube_length: FAMI only, key frames sharing one crop box and backbone features (1 = reference).
        weights_sha256: checkpoint sha256 (required; ``random-init:seed=<n>`` for untrained nets).
        amp, precision: fp16 autocast on CUDA (``amp``), or an explicit ``fp32 | bf16 | fp16 |
            auto`` that replaces it (bf16 autocast works on CPUs); recorded in the header.
    """
    fami = isinstance(estimator, FAMIPose)
    simcc = isinstance(estimator, SimCCPose)
    if contract is None:
        contract = (famipose_contract() if fami else simcc_contract(estimator.split_ratio) if simcc
                    else fastpose_contract())
    if simcc and tuple(contract.crop_hw) != tuple(estimator.input_size):
        raise ValueError(f"SimCC weights are for input {estimator.input_size}, the contract crops {contract.crop_hw}")
    k = int(estimator.num_joints)
    if not weights_sha256:
        raise ValueError("weights_sha256 is required: the sha256 of the checkpoint file, or "
                         "'random-init:seed=<n>' for an untrained estimator")
    jobs = _as_jobs(sequences)
    params = nms_params or PoseNMSParams()
    name = "famipose" if fami else "simcc" if simcc else "sikr"
    default_extractor = {"famipose": "famipose", "simcc": "simcc-hrnet"}.get(name, "alphapose-fastpose-sikr")
    source = {"extractor": extractor or default_extractor,
              "estimator": name, "weights_sha256": weights_sha256,
              "contract": contract.to_dict(), "decode": contract.decode,
              "coordinates": "image px, pixel-index convention (integer = pixel centre, no +0.5)",
              "num_joints": k, "precision": precision_record(precision, device, amp)}
    if getattr(estimator, "zoo_name", None):  # set when the weights were given by zoo name
        source["weights_name"] = estimator.zoo_name
    if fami:
        source["fami"] = {"tube_length": int(tube_length), "config": asdict(estimator.config),
                          "track_before_estimator": f"iou>={tracker_iou}, max_age={tracker_max_age}"}
    else:
        source["flip_test"] = bool(flip_test)
        if simcc:
            source["simcc"] = {"split_ratio": estimator.split_ratio}
        source["pose_nms"] = asdict(params) | {"min_box_area": min_box_area} if use_pose_nms else None
        source["tracker"] = f"file ids, else IoU Hungarian iou>={tracker_iou}, max_age={tracker_max_age}"
    header = CacheHeader(kind="keypoints2d", dataset=dataset, joint_set=joint_set_for(k, contract),
                         source=source, inputs_fingerprint=fingerprint or detections_fingerprint(jobs),
                         input_fingerprints=detection_fingerprints(jobs))
    result = KeypointResult()
    t0 = time.perf_counter()
    with CacheWriter(out_path, header, overwrite=overwrite, allow_nonfinite=True) as writer:
        loader_kw = dict(batch_size=None, num_workers=num_workers, pin_memory=torch.device(device).type == "cuda",
                         worker_init_fn=_worker_init if num_workers > 0 else None,
                         prefetch_factor=2 if num_workers > 0 else None)
        if fami:
            runner = FamiRunner(estimator, contract, device, amp=amp, batch_size=batch_size,
                                precision=precision)
            _run_tubes(jobs, writer, runner, contract, batch_size, tube_length, tracker_iou,
                       tracker_max_age, loader_kw, progress, result)
        else:
            runner = (SimccRunner if simcc else SikrRunner)(estimator, contract, device, amp=amp,
                                                            flip_test=flip_test, precision=precision)
            _run_detections(jobs, writer, runner, contract, batch_size, params if use_pose_nms else None,
                            min_box_area, tracker_iou, tracker_max_age, loader_kw, progress, result)
    result.seconds = time.perf_counter() - t0
    for sid, err in result.failed.items():
        log.error("sequence %r failed: %s", sid, err)
    return result


def _attrs(meta: dict[str, Any], job_attrs: dict[str, Any], **more: Any) -> dict[str, Any]:
    meta = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in meta.items()}
    return {**meta, **job_attrs, **more}


def _proposal(sc: np.ndarray, box_score: float) -> float:
    return float(sc.mean() + box_score + 1.25 * sc.max())


def _run_detections(jobs: list[VideoDetections], writer: CacheWriter, runner: SikrRunner,
                    contract: PreprocessContract, batch_size: int, params: PoseNMSParams | None,
                    min_box_area: float, tracker_iou: float, tracker_max_age: int, loader_kw: dict,
                    progress: bool, result: KeypointResult) -> None:
    done = writer.done()
    todo = []
    for j in jobs:
        hit = writer.has(j.video_id) if j.single else any(s.startswith(j.video_id + "/track") for s in done)
        if hit:
            result.skipped.append(j.video_id)
        else:
            todo.append(j)
    k = runner.model.num_joints
    loader = DataLoader(DetectionCropStream(todo, contract, batch_size), **loader_kw)
    state: dict[int, dict[str, Any]] = {}
    dead: set[int] = set()
    bar = progress_bar(total=sum(len(j.frame_index) for j in todo), unit="frame", progress=progress,
                       desc=f"keypoints -> {Path(writer.path).name}")
    try:
        for ch in loader:
            i = int(ch["job"])
            job = todo[i]
            if i in dead:
                continue
            st = state.setdefault(i, {"tracks": {}, "pos": -1, "tracker": IoUTracker(tracker_iou, tracker_max_age)})
            try:
                if "error" in ch:
                    raise RuntimeError(ch["error"])
                _consume_detections(ch, job, st, writer, runner, contract, params, min_box_area, k, batch_size)
            except Exception as e:  # noqa: BLE001 - one bad video must not stop the others
                if isinstance(e, (KeyboardInterrupt, MemoryError)):
                    raise
                for t in state.pop(i)["tracks"].values():
                    t.abort()
                dead.add(i)
                result.failed[job.video_id] = f"{type(e).__name__}: {e}" if "error" not in ch else ch["error"]
                continue
            bar.update(int(ch["upto"]) - st["pos"] if st["pos"] >= 0 else int(ch["upto"]) + 1)
            # frames enter the summary only when the video commits (failed ones are not counted)
            st["frames"] = st.get("frames", 0) + int(ch["upto"]) - max(st["pos"], -1)
            st["pos"] = int(ch["upto"])
            if ch["last"]:
                result.frames += st["frames"]
                tracks = state.pop(i)["tracks"]
                if job.single:
                    t = tracks.get(0) or _new_track(writer, job, 0, 0, k, batch_size, ch["meta"])
                    tracks[0] = t
                    t.pad_to(len(job.frame_index))
                for t in tracks.values():
                    t.commit()
                    result.written.append(t.seq_id)
                    result.invalid_frames += t.n_invalid
                if not tracks:
                    result.empty.append(job.video_id)
    finally:
        bar.close()
        for st in state.values():
            for t in st["tracks"].values():
                t.abort()


def _new_track(writer: CacheWriter, job: VideoDetections, tid: int, start: int, k: int, rows: int,
               meta: dict[str, Any]) -> _TrackOut:
    sid = job.video_id if job.single else f"{job.video_id}/track{tid}"
    attrs = _attrs(meta, job.attrs, track_id=int(tid), video_id=job.video_id)
    return _TrackOut(writer, sid, attrs, job.frame_index, 0 if job.single else start, k, tid, rows)


def _consume_detections(ch: dict[str, Any], job: VideoDetections, st: dict[str, Any], writer: CacheWriter,
                        runner: SikrRunner, contract: PreprocessContract, params: PoseNMSParams | None,
                        min_box_area: float, k: int, batch_size: int) -> None:
    rows, ok = np.asarray(ch["rows"]), np.asarray(ch["ok"], bool)
    good = rows[ok]
    cboxes = contract.crop_box(job.boxes[good]) if good.size else np.zeros((0, 4), np.float32)
    crops = ch["crops"]
    coords, scores = runner(crops[torch.from_numpy(np.flatnonzero(ok))] if not ok.all() else crops, cboxes)
    out = {int(r): n for n, r in enumerate(good)}
    for pos in range(st["pos"] + 1, int(ch["upto"]) + 1):
        sl = job.rows_of(pos)
        cand = [r for r in range(sl.start, sl.stop) if r in out]
        if not cand:
            continue
        idx = [out[r] for r in cand]
        kp, sc, cb = coords[idx], scores[idx], cboxes[idx]
        bx, bs = job.boxes[cand], job.scores[cand]
        if job.single:
            picks = [(0, kp[0], sc[0], 0)]
        elif params is not None and not job.tracked:
            res = pose_nms(bx, bs[:, None], np.arange(len(cand))[:, None].astype(np.float32), kp, sc[..., None],
                           params, min_box_area)
            picks = [(p, pose.numpy(), s.numpy()[:, 0], None) for p, pose, s in
                     zip(res.pick_ids, res.poses, res.pose_scores)]
        else:
            picks = [(n, kp[n], sc[n], None) for n in range(len(cand))]
        if not picks:
            continue
        if job.single:
            tids = [0]
        elif job.tracked:
            tids = [int(job.track_ids[cand[p[0]]]) for p in picks]
        else:
            tids = [int(t) for t in st["tracker"].update(pos, bx[[p[0] for p in picks]])]
        for (n, pose, s, _), tid in zip(picks, tids):
            t = st["tracks"].get(tid)
            if t is None:
                t = st["tracks"][tid] = _new_track(writer, job, tid, pos, k, batch_size, ch["meta"])
            if t.next_pos > pos:
                continue  # a file id used twice in one frame: the first (pick order) wins
            t.put(pos, pose.astype(np.float32), s.astype(np.float32), bx[n], cb[n], _proposal(s, float(bs[n])))


def _tubes(jobs: list[VideoDetections], iou: float, max_age: int) -> list[TubeSpec]:
    tubes = []
    for j in jobs:
        if j.single:
            boxes = np.full((len(j.frame_index), 4), np.nan, np.float32)
            boxes[j.det_pos] = j.boxes
            tubes.append(TubeSpec(j.video_id, j.source, j.frame_index, boxes, 0, j.attrs))
            continue
        for tid, pos, boxes in split_tracks(j, IoUTracker(iou, max_age)):
            tubes.append(TubeSpec(f"{j.video_id}/track{tid}", j.source, j.frame_index[pos], boxes, tid,
                                  {**j.attrs, "video_id": j.video_id}))
    return tubes


def _run_tubes(jobs: list[VideoDetections], writer: CacheWriter, runner: FamiRunner,
               contract: PreprocessContract, batch_size: int, tube_length: int, iou: float, max_age: int,
               loader_kw: dict, progress: bool, result: KeypointResult) -> None:
    tubes = []
    for t in _tubes(jobs, iou, max_age):
        (result.skipped.append(t.seq_id) if writer.has(t.seq_id) else tubes.append(t))
    k = runner.model.num_joints
    loader = DataLoader(TubeCropStream(tubes, contract, batch_size, tube_length), **loader_kw)
    open_: dict[int, _TrackOut] = {}
    dead: set[int] = set()
    pending: dict[int, list[int]] = {}  # per tube: [frames, invalid frames] until it commits
    bar = progress_bar(total=sum(len(t.boxes) for t in tubes), unit="frame", progress=progress,
                       desc=f"keypoints -> {Path(writer.path).name}")
    try:
        for ch in loader:
            i = int(ch["job"])
            tube = tubes[i]
            if i in dead:
                continue
            try:
                if "error" in ch:
                    raise RuntimeError(ch["error"])
                if i not in open_:
                    open_[i] = _TrackOut(writer, tube.seq_id, _attrs(ch["meta"], tube.attrs or {},
                                         track_id=tube.track_id), np.asarray(tube.frame_index),
                                         0, k, tube.track_id, batch_size)
                out = open_[i]
                keys, ok = np.asarray(ch["keys"]), np.asarray(ch["ok"], bool)
                coords, scores = runner(ch["crops"], np.asarray(ch["key_rows"])[ok], np.asarray(ch["crop_boxes"])[ok])
                n = 0
                for key, good, cb in zip(keys, ok, np.asarray(ch["crop_boxes"])):
                    if good:
                        out.put(int(key), coords[n], scores[n], tube.boxes[key], cb, float(scores[n].mean()))
                        n += 1
                out.pad_to(int(ch["upto"]) + 1)
            except Exception as e:  # noqa: BLE001
                if isinstance(e, (KeyboardInterrupt, MemoryError)):
                    raise
                t = open_.pop(i, None)
                if t is not None:
                    t.abort()
                dead.add(i)
                result.failed[tube.seq_id] = ch.get("error") or f"{type(e).__name__}: {e}"
                continue
            bar.update(len(keys))
            counts = pending.setdefault(i, [0, 0])  # summary counts only committed tubes
            counts[0] += len(keys)
            counts[1] += int((~ok).sum())
            if ch["last"]:
                open_.pop(i).commit()
                result.written.append(tube.seq_id)
                result.frames += counts[0]
                result.invalid_frames += counts[1]
    finally:
        bar.close()
        for t in open_.values():
            t.abort()
