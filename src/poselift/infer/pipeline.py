"""``poselift infer``: videos -> detect -> track -> 2D -> lift -> render, every stage cached.

The output folder holds ``run.json`` (the input videos and each stage's settings) and the
stage caches ``detections.h5``, ``keypoints2d.h5``, ``poses3d.h5``. A re-run resumes every
stage; a stage whose settings changed (or whose upstream result changed) is started afresh
together with the stages after it, so changing only the lifter reuses detections and 2D.
A folder made for other input videos is refused (``overwrite=True`` empties it first):
results of two runs are never mixed.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from poselift.core.precision import inference_precision
from poselift.core.progress import Progress, progress_bar
from poselift.datasets.cache import Cache, CacheHeader, CacheWriter
from poselift.datasets.cache.lock import WriterLock
from poselift.datasets.cache.writer import partial_dir
from poselift.datasets.joints import get_joint_set

from .lift import Lifter, lift_track, load_any_lifter, to_lifter_joints
from .outputs import TrackResult
from .sources import InputError, VideoInput, file_digest, frame_names, list_inputs, load_2d_json
from .stages import run_detect, write_2d_cache

__all__ = ["InferOptions", "run_infer", "STAGES"]

log = logging.getLogger(__name__)
STAGES = ("detect", "keypoints", "lift")
CACHE = {"detect": "detections.h5", "keypoints": "keypoints2d.h5", "lift": "poses3d.h5"}


@dataclass
class InferOptions:
    """Every setting of one run (see ``poselift infer --help``)."""

    lifter: str
    detector: str | None = None
    detector_size: int | None = None
    det_conf: float = 0.25
    det_nms: float = 0.45
    estimator: str = "sikr"
    estimator_weights: str | None = None
    estimator_input_size: tuple[int, int] | None = None
    keypoints: list[str] = field(default_factory=list)
    lifter_joints_in: str | None = None
    lifter_joints_out: str | None = None
    single_person: bool = False
    track_min_hits: int = 3
    track_max_age: int = 30
    track_max_gap: int = 10
    flip: bool = True
    render: bool = True
    max_panels: int = 4
    render_height: int = 360
    device: str = "auto"
    overwrite: bool = False
    trust_checkpoint: bool = False
    tcmr: str | None = None  # optional TCMR stage (tcmr_stage.py): checkpoint, zoo name or None
    body_model_dir: str | None = None
    features_backbone: str = "hmr"
    features_weights: str | None = None
    features_random_init: int | None = None  # seed of an untrained backbone (tests, smoke runs)
    features_base_width: int = 64
    progress: Progress = True  # True/'auto', 'bar', 'lines' or False/'off' (poselift.core.progress)
    # Forward precision of every network (fp32 | bf16 | fp16 | auto); None keeps the default
    # of each path (fp16 autocast on CUDA for detector / 2D / features, float32 otherwise).
    precision: str | None = None


def _device(name: str) -> str:
    from poselift.core.device import resolve_device

    return str(resolve_device(name))


class _Run:
    """run.json bookkeeping: which inputs this folder is for, and each stage's settings key."""

    def __init__(self, out: Path, videos: list[VideoInput], overwrite: bool) -> None:
        self.out, self.path = out, out / "run.json"
        inputs = [v.identity() for v in videos]
        # One run per folder, held until the run ends: a second run with other settings or
        # --overwrite would otherwise delete stage caches the first is writing (the caches'
        # own writer locks do not cover removal). Taken before anything here is touched.
        out.mkdir(parents=True, exist_ok=True)
        self.lock = WriterLock(self.path)
        self.lock.acquire()
        try:
            if overwrite:
                for p in [self.path, *(out / c for c in CACHE.values())]:
                    _remove_cache(p) if p.suffix == ".h5" else p.unlink(missing_ok=True)
            self.doc = (json.loads(self.path.read_text()) if self.path.exists()
                        else {"inputs": inputs, "stages": {}})
            if self.doc.get("inputs") != inputs:
                have = [i.get("path") for i in self.doc.get("inputs", [])]
                raise InputError(f"{out}: this output folder holds results for other input videos "
                                 f"({have}); use another --out, or --overwrite to discard them")
            self.save()
        except BaseException:
            self.lock.release()
            raise

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        tmp.replace(self.path)

    def stage(self, name: str, key: dict[str, Any]) -> Path:
        """The stage's cache path; started afresh (with the later stages) when its key changed."""
        if self.doc["stages"].get(name) != key:
            for later in STAGES[STAGES.index(name):]:
                if self.doc["stages"].pop(later, None) is not None or (self.out / CACHE[later]).exists():
                    log.info("%s: settings of stage %r changed: starting it afresh", self.out, later)
                _remove_cache(self.out / CACHE[later])
            self.doc["stages"][name] = key
            self.save()
        return self.out / CACHE[name]


def _remove_cache(p: Path) -> None:
    p.unlink(missing_ok=True)
    shutil.rmtree(partial_dir(p), ignore_errors=True)


def _yolox_detector(o: InferOptions, device: str):
    from poselift.extract import detect_people, load_yolox

    model = load_yolox(o.detector, trust=o.trust_checkpoint)

    def detect(frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        res = detect_people(frames, model, size=o.detector_size, conf_thre=o.det_conf, nms_thre=o.det_nms,
                            batch_size=len(frames), device=device, precision=o.precision)
        return [(r.boxes, r.scores) for r in res]
    return detect


def _precision_key(o: InferOptions) -> dict[str, str]:
    """Stage-key part for ``--precision``: absent when not given, so folders made before the
    switch existed keep their keys (and their caches)."""
    return {"precision": o.precision} if o.precision else {}


def _tracker(o: InferOptions) -> dict[str, int]:
    """The tracker's birth / death / gap parameters (``TrackerParams`` fields)."""
    return {"min_hits": o.track_min_hits, "max_age": o.track_max_age, "max_gap": o.track_max_gap}


def _keypoints_stage(o: InferOptions, run: _Run, videos: list[VideoInput], device: str,
                     timings: dict[str, float]) -> Path:
    from poselift.extract.backbones import file_sha256

    fp_inputs = json.dumps([v.identity() for v in videos], sort_keys=True)
    given = [Path(k) for k in o.keypoints]
    if len(given) == 1 and given[0].suffix in (".h5", ".hdf5"):
        Cache(given[0], kind="keypoints2d")  # readable, right kind: else a clear error now
        run.stage("detect", {"skipped": "2D given"})
        run.stage("keypoints", {"cache": str(given[0].resolve()), "content": Cache(given[0]).content_fingerprint})
        return given[0]
    if given:
        if len(given) != len(videos):
            raise InputError(f"--keypoints: {len(given)} file(s) for {len(videos)} video(s); give one per video, "
                             f"in the same order")
        digests = {str(p): file_digest(p) for p in given}
        run.stage("detect", {"skipped": "2D given"})
        path = run.stage("keypoints", {"files": digests, "tracker": _tracker(o)})
        if not path.exists():
            t = time.perf_counter()
            people = {v.video_id: load_2d_json(p, v.n_frames, frame_names(v)) for v, p in zip(videos, given)}
            write_2d_cache(path, people, videos, {"from_files": digests, "tracker": _tracker(o)}, fp_inputs)
            timings["keypoints_s"] = time.perf_counter() - t
        return path
    if not o.detector or not o.estimator_weights:
        raise InputError("give --detector and --estimator-weights, or bring the 2D keypoints with --keypoints")
    det_key = {"detector": file_sha256(o.detector), "size": o.detector_size, "conf": o.det_conf, "nms": o.det_nms,
               "tracker": _tracker(o)} | _precision_key(o)
    det_path = run.stage("detect", det_key)
    if not det_path.exists():
        t = time.perf_counter()
        run_detect(videos, det_path, det_key, file_digest_of(fp_inputs), _yolox_detector(o, device),
                   progress=o.progress)
        timings["detect_s"] = time.perf_counter() - t
    dets = Cache(det_path, kind="detections")
    for v in videos:  # frames the detector could not decode, reported even without a render
        v.corrupt = [int(i) for i in dets.info(v.video_id).attrs.get("corrupt_frames", [])]
    est_key = {"estimator": o.estimator, "weights": file_sha256(o.estimator_weights),
               "input_size": list(o.estimator_input_size or []),
               "detections": dets.content_fingerprint} | _precision_key(o)
    path = run.stage("keypoints", est_key)
    if not path.exists():
        t = time.perf_counter()
        _estimate_2d(o, dets, videos, path, device)
        timings["keypoints_s"] = time.perf_counter() - t
    return path


def file_digest_of(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _estimate_2d(o: InferOptions, dets: Cache, videos: list[VideoInput], path: Path, device: str) -> None:
    import argparse

    from poselift.extract.cli_keypoints import _load_estimator
    from poselift.extract.detections import VideoDetections
    from poselift.extract.keypoints import extract_keypoints

    from .stages import detections_of

    ns = argparse.Namespace(estimator=o.estimator, weights=o.estimator_weights, trust_checkpoint=o.trust_checkpoint,
                            input_size=o.estimator_input_size, fami_config="release")
    model, contract, sha = _load_estimator(ns)
    jobs = []
    for v in videos:
        d = detections_of(dets, v.video_id)
        if not len(d["frame_index"]):
            continue
        jobs.append(VideoDetections(v.video_id, v.path, np.arange(v.n_frames), d["frame_index"], d["boxes"],
                                    d["score"], d["track_id"], attrs={"video_id": v.video_id}))
    res = extract_keypoints(jobs, path, model, contract, device=device, weights_sha256=sha,
                            dataset="custom", progress=o.progress, precision=o.precision)
    if not res.written and not path.exists():
        CacheWriter(path, CacheHeader(kind="keypoints2d", dataset="custom", joint_set="coco17")).finalize()
    for sid, err in res.failed.items():
        log.warning("2D estimation failed for %s: %s", sid, err)


def _tracks_2d(kp: Cache, v: VideoInput, single: bool) -> list[dict[str, Any]]:
    """The 2D tracks of one video (dicts of arrays over each track's frame span)."""
    def mine(s: str) -> bool:
        a = kp.info(s).attrs
        if "video_id" in a or "video" in a:  # written by infer / extraction, or the demo's file name
            return a.get("video_id") == v.video_id or a.get("video") == v.path.name
        return s == v.video_id or s.startswith(v.video_id + "/")

    ids = [s for s in kp.ids if mine(s)]
    tracks = []
    for s in ids:
        f = {n: kp.read(s, n) for n in ("keypoints", "scores", "frame_index", "valid") if n in kp.info(s).fields}
        f["boxes"] = kp.read(s, "boxes") if "boxes" in kp.info(s).fields else np.full((len(f["keypoints"]), 4), np.nan)
        f["proposal"] = kp.read(s, "proposal_score") if "proposal_score" in kp.info(s).fields else None
        f.setdefault("frame_index", np.arange(len(f["keypoints"])))
        f.setdefault("valid", np.ones(len(f["keypoints"]), bool))
        f.setdefault("scores", np.ones(f["keypoints"].shape[:2], np.float32))
        tid = kp.info(s).attrs.get("track_id", len(tracks))
        tracks.append({"seq_id": s, "track_id": int(tid), **f})
    tracks = [t for t in tracks if t["valid"].any()]
    if single and tracks:
        return [_best_per_frame(tracks, v)]
    return tracks


def _best_per_frame(tracks: list[dict[str, Any]], v: VideoInput) -> dict[str, Any]:
    """VideoPose3D's single-person rule: per frame keep the person with the highest score."""
    k = tracks[0]["keypoints"].shape[1]
    n = v.n_frames
    out = {"seq_id": f"{v.video_id}/person", "track_id": 0, "frame_index": np.arange(n),
           "keypoints": np.zeros((n, k, 2), np.float32), "scores": np.zeros((n, k), np.float32),
           "boxes": np.full((n, 4), np.nan, np.float32), "valid": np.zeros(n, bool), "proposal": np.zeros(n, np.float32)}
    best = np.full(n, -np.inf)
    for t in tracks:
        sc = t["proposal"] if t["proposal"] is not None else t["scores"].mean(-1)
        for i in np.flatnonzero(t["valid"]):
            f = int(t["frame_index"][i])
            if 0 <= f < n and sc[i] > best[f]:
                best[f] = sc[i]
                for key in ("keypoints", "scores", "boxes"):
                    out[key][f] = t[key][i]
                out["proposal"][f], out["valid"][f] = sc[i], True
    first, last = np.flatnonzero(out["valid"])[[0, -1]]
    return {k: (val[first:last + 1] if isinstance(val, np.ndarray) else val) for k, val in out.items()}


def _lift_stage(o: InferOptions, run: _Run, kp_path: Path, videos: list[VideoInput], lifter: Lifter,
                device: str, notes: list[str]) -> dict[str, list[TrackResult]]:
    kp = Cache(kp_path, kind="keypoints2d")
    js2d = kp.header.joint_set or "coco17"
    k2d = get_joint_set(js2d).num_joints
    to_lifter_joints(np.zeros((1, k2d, 2)), js2d, lifter.joints_in)  # refuse before touching the cache
    key = {"lifter": lifter.identity, "flip": o.flip, "single_person": o.single_person,
           "2d": kp.content_fingerprint} | _precision_key(o)
    path = run.stage("lift", key)
    header = CacheHeader(kind="predictions", dataset="custom", joint_set=lifter.joints_out, source=key,
                         inputs_fingerprint=kp.content_fingerprint)
    results: dict[str, list[TrackResult]] = {}
    rf = lifter.receptive_field
    for v in videos:
        results[v.video_id] = [t | {"pose": None} for t in _tracks_2d(kp, v, o.single_person)]
        notes += [f"{t['seq_id']}: {len(t['frame_index'])} frames, shorter than the lifter's receptive field "
                  f"({rf}): edge-padded" for t in results[v.video_id] if len(t["frame_index"]) < rf]
    # A finalised cache with this stage's settings is complete: nothing to redo (and not rewritten).
    with (_null() if path.exists() else CacheWriter(path, header, allow_nonfinite=True)) as w:
        todo = [(v, t) for v in videos for t in results[v.video_id]] if w is not None else []
        for v, t in progress_bar(todo, desc="lift", unit="track", progress=o.progress):
            sid = t["seq_id"]
            if not w.has(sid):
                pose = lift_track(lifter, t["keypoints"], t["valid"], js2d, v.size, flip=o.flip, device=device,
                                  precision=o.precision)
                w.write_sequence(sid, {"joints_3d": pose, "frame_index": t["frame_index"].astype(np.int64),
                                       "valid": t["valid"].astype(bool), "keypoints_2d": t["keypoints"],
                                       "scores_2d": t["scores"], "boxes": t["boxes"].astype(np.float32)},
                                 {"video_id": v.video_id, "track_id": t["track_id"]})
                t["pose"] = pose
    cache = Cache(path, kind="predictions")
    out: dict[str, list[TrackResult]] = {}
    for vid, tracks in results.items():
        out[vid] = [TrackResult(vid, t["seq_id"], t["track_id"], t["frame_index"], t["valid"], t["boxes"],
                                # frames without a detection hold no 2D observation (NaN), only the lift
                                np.where(t["valid"][:, None, None], t["keypoints"], np.nan).astype(np.float32),
                                np.where(t["valid"][:, None], t["scores"], 0).astype(np.float32), js2d,
                                t["pose"] if t["pose"] is not None else cache.read(t["seq_id"], "joints_3d"),
                                lifter.joints_out, lifter.traj is None, t["proposal"]) for t in tracks]
    return out


@contextmanager
def _null() -> Iterator[None]:
    yield None


def run_infer(inputs: list[str], out: str | Path, o: InferOptions) -> dict[str, Any]:
    """Run every stage; returns {"paths": {...}, "timings": {...}, "notes": [...], "tracks": n}.

    A second run on the same ``out`` while this one works is refused (``CacheLockedError``
    naming the holder)."""
    out = Path(out)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    videos = list_inputs(inputs)
    device = _device(o.device)
    run = _Run(out, videos, o.overwrite)
    try:
        return _run_stages(out, o, videos, device, run, t0, timings)
    finally:
        run.lock.release()


def _run_stages(out: Path, o: InferOptions, videos: list[VideoInput], device: str,
                run: _Run, t0: float, timings: dict[str, float]) -> dict[str, Any]:
    from .finish import write_outputs

    if o.tcmr:
        from .tcmr_stage import check_tcmr_options

        check_tcmr_options(o)
    lifter = load_any_lifter(o.lifter, joints_in=o.lifter_joints_in, joints_out=o.lifter_joints_out,
                             device=device, trust_pickle=o.trust_checkpoint)
    kp_path = _keypoints_stage(o, run, videos, device, timings)
    notes: list[str] = []
    t = time.perf_counter()
    tracks = _lift_stage(o, run, kp_path, videos, lifter, device, notes)
    timings["lift_s"] = time.perf_counter() - t
    overlays, tcmr_paths = {}, {}
    if o.tcmr:
        from .tcmr_stage import mesh_overlay, run_tcmr_stage

        meshes, faces = run_tcmr_stage(o, run, Cache(kp_path).content_fingerprint, videos, tracks, device,
                                       timings, notes)
        for v in videos:
            overlays[v.video_id] = mesh_overlay(meshes[v.video_id], faces, v.size)
            tcmr_paths[f"{v.video_id}:tcmr"] = str(out / v.video_id / "tcmr_output.pkl")
    else:
        from .tcmr_stage import drop_tcmr_outputs

        drop_tcmr_outputs(run, videos)
    settings = {k: v for k, v in asdict(o).items() if k not in ("progress", "overwrite")}
    if o.precision:
        settings["precision_resolved"] = inference_precision(o.precision, device).record()
    paths = write_outputs(out, videos, tracks, settings, notes, timings, o, lifter.joints_out,
                          overlays=overlays) | tcmr_paths
    timings["total_s"] = time.perf_counter() - t0
    return {"paths": paths, "timings": {k: round(v, 2) for k, v in timings.items()}, "notes": notes,
            "tracks": sum(len(v) for v in tracks.values()), "caches": {s: str(out / c) for s, c in CACHE.items()}}
