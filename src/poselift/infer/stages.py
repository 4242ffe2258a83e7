"""The caching stages of ``poselift infer`` before lifting: detect (+ track) and 2D keypoints.

Caches (the poselift cache format, ``docs/cache-format.md``):

* ``detections.h5`` (kind ``detections``): one sequence per video, one row per person box:
  ``boxes`` (N, 4) xyxy px, ``score`` (N,), ``frame_index`` (N,), ``track_id`` (N,), ``valid``
  (N,). A video with no person holds a single ``valid=False`` row (the writer refuses empty
  sequences, and an empty video must still count as done on a re-run).
* ``keypoints2d.h5`` (kind ``keypoints2d``): one sequence per track, ``<video>/track<k>``, the
  layout ``poselift-extract keypoints`` writes (``keypoints``, ``scores``, ``boxes``,
  ``frame_index``, ``valid``, ``track_id``; attributes ``image_size``, ``fps``, ``video_id``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from poselift.core.progress import Progress, progress_bar
from poselift.datasets.cache import Cache, CacheHeader, CacheWriter

from .sources import Person2D, VideoInput, read_frames

__all__ = ["assign_tracks", "run_detect", "write_2d_cache", "detections_of"]

log = logging.getLogger(__name__)


def assign_tracks(frame: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray | None = None,
                  scores: np.ndarray | None = None, *, params: dict[str, Any] | None = None,
                  png: Path | None = None) -> np.ndarray:
    """Track ids for flat person rows sorted by frame: (N,) frame, (N, 4) boxes, optional (N, J, 2)
    keypoints with (N, J) scores -> (N,) ids, -1 for a row in no confirmed track.

    :func:`poselift.extract.tracking.track_people` (box IoU + OKS, birth after ``min_hits``
    matches, death after ``max_age`` missed frames; ``params`` are its ``TrackerParams``);
    ``png`` gets its tracks-over-time plot."""
    from poselift.extract.tracking import TrackerParams, plot_tracks, track_people

    frame = np.asarray(frame, np.int64)
    ids = np.full(len(frame), -1, np.int64)
    if not len(frame):
        return ids
    rows = [np.flatnonzero(frame == f) for f in range(int(frame.max()) + 1)]  # empty frames age tracks
    kp = None
    if keypoints is not None:
        conf = scores if scores is not None else np.ones(keypoints.shape[:2], np.float32)
        kp3 = np.concatenate([keypoints, conf[..., None]], -1).astype(np.float32)
        kp = [kp3[r] for r in rows]
    res = track_people([boxes[r] for r in rows], kp, params=TrackerParams(**(params or {})))
    for f, r in enumerate(rows):
        ids[r] = res.track_ids[f]
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_tracks(res, png)
    return ids


def detections_of(cache: Cache, video_id: str) -> dict[str, np.ndarray]:
    """The valid rows of one video in a detections cache."""
    valid = cache.read(video_id, "valid")
    valid &= cache.read(video_id, "track_id") >= 0  # rows in no confirmed track are not estimated
    return {k: cache.read(video_id, k)[valid] for k in ("boxes", "score", "frame_index", "track_id")}


def run_detect(videos: list[VideoInput], path: Path, settings: dict[str, Any], fingerprint: str,
               detect: Callable[[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]], *,
               chunk: int = 8, progress: Progress = True, stats: dict[str, Any] | None = None) -> None:
    """Detect people in every frame and track them; ``detect(frames) -> [(boxes, scores)]``."""
    header = CacheHeader(kind="detections", dataset="custom", source=settings, inputs_fingerprint=fingerprint)
    with CacheWriter(path, header, allow_nonfinite=True) as w:
        for v in videos:
            if w.has(v.video_id):
                continue
            rows: dict[str, list] = {"frame_index": [], "boxes": [], "score": []}
            batch: list[tuple[int, np.ndarray]] = []

            def flush() -> None:
                if not batch:
                    return
                for (i, _), (b, s) in zip(batch, detect([f for _, f in batch])):
                    rows["frame_index"] += [i] * len(b)
                    rows["boxes"] += list(np.asarray(b, np.float32).reshape(-1, 4))
                    rows["score"] += list(np.asarray(s, np.float32).reshape(-1))
                batch.clear()

            for i, frame in progress_bar(read_frames(v), total=v.n_frames, unit="frame", progress=progress,
                                         desc=f"detect {v.video_id}"):
                if frame is not None:
                    batch.append((i, frame))
                if len(batch) >= chunk:
                    flush()
            flush()
            if v.corrupt:
                log.warning("%s: %d unreadable frame(s) %s skipped", v.path, len(v.corrupt), v.corrupt[:10])
            fi = np.asarray(rows["frame_index"], np.int64)
            boxes = np.asarray(rows["boxes"], np.float32).reshape(-1, 4)
            if len(fi):
                tid = assign_tracks(fi, boxes, params=settings.get("tracker"),
                                    png=path.parent / v.video_id / "tracks.png")
                arrays = {"frame_index": fi, "boxes": boxes, "score": np.asarray(rows["score"], np.float32),
                          "track_id": tid, "valid": np.ones(len(fi), bool)}
            else:
                arrays = {"frame_index": np.array([-1]), "boxes": np.full((1, 4), np.nan, np.float32),
                          "score": np.zeros(1, np.float32), "track_id": np.array([-1]),
                          "valid": np.zeros(1, bool)}
            w.write_sequence(v.video_id, arrays, _video_attrs(v))
            if stats is not None:
                stats.setdefault("corrupt", {})[v.video_id] = list(v.corrupt)


def _video_attrs(v: VideoInput) -> dict[str, Any]:
    return {"image_size": list(v.size), "fps": float(v.fps), "source_frames": int(v.n_frames),
            "source": str(v.path), "video_id": v.video_id, "corrupt_frames": list(v.corrupt)}


def write_2d_cache(path: Path, per_video: dict[str, Person2D], videos: list[VideoInput],
                   settings: dict[str, Any], fingerprint: str) -> None:
    """People from files -> the ``keypoints2d`` cache, one sequence per track (ids from the
    file, else tracked here) from its first to its last frame; frames between without the
    person are ``valid=False`` rows holding zeros (and NaN boxes), as extraction writes them."""
    js = {p.joint_set for p in per_video.values() if len(p.frame)}
    joint_set = js.pop() if len(js) == 1 else ("coco17" if not js else None)
    if joint_set is None:
        raise ValueError(f"2D inputs mix joint sets {sorted(js)}; give files of one layout")
    header = CacheHeader(kind="keypoints2d", dataset="custom", joint_set=joint_set, source=settings,
                         inputs_fingerprint=fingerprint)
    with CacheWriter(path, header, allow_nonfinite=True) as w:
        for v in videos:
            p = per_video[v.video_id]
            if not len(p.frame):
                continue
            tid = p.track if (p.track >= 0).all() else assign_tracks(
                p.frame, p.boxes, p.keypoints, p.scores, params=settings.get("tracker"),
                png=path.parent / v.video_id / "tracks.png")
            for t in np.unique(tid[tid >= 0]):
                sid = f"{v.video_id}/track{int(t)}"
                if w.has(sid):
                    continue
                rows = np.flatnonzero(tid == t)
                # one row per frame: a duplicated id in a frame keeps the higher-scoring person
                rows = rows[np.argsort(-p.box_score[rows], kind="stable")]
                _, first = np.unique(p.frame[rows], return_index=True)
                rows = np.sort(rows[first])
                f0, f1 = int(p.frame[rows[0]]), int(p.frame[rows[-1]])
                n = f1 - f0 + 1
                at = p.frame[rows] - f0
                k = p.keypoints.shape[1]
                kp, sc = np.zeros((n, k, 2), np.float32), np.zeros((n, k), np.float32)
                bx, valid = np.full((n, 4), np.nan, np.float32), np.zeros(n, bool)
                kp[at], sc[at], bx[at], valid[at] = p.keypoints[rows], p.scores[rows], p.boxes[rows], True
                ps = np.zeros(n, np.float32)
                ps[at] = p.box_score[rows]
                w.write_sequence(sid, {"keypoints": kp, "scores": sc, "boxes": bx, "valid": valid,
                                       "frame_index": np.arange(f0, f1 + 1, dtype=np.int64),
                                       "track_id": np.full(n, int(t), np.int64), "proposal_score": ps},
                                 {**_video_attrs(v), "track_id": int(t)})
