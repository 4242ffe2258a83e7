"""Several person boxes per frame: detections of one video, an IoU tracker and the loaders.

``VideoDetections`` holds every box of one video (N boxes over F frames) as flat arrays; it is
small (a few floats per box), so it lives in memory while frames stream. Track ids are either
given (PoseTrack ``track_id``, or 0 for a single-person sequence) or -1, and then assigned by
:class:`IoUTracker` (documented below) after the estimator and pose NMS ran.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from .boxes import (BoxError, _frame_of_image_id, coco_detection_list, det_bbox, det_number, frame_hint,
                    load_posetrack_tracks, to_xyxy)

__all__ = ["VideoDetections", "IoUTracker", "box_iou", "load_coco_frames", "load_posetrack_frames",
           "detections_from_tracks", "split_tracks"]


@dataclass
class VideoDetections:
    """Person boxes of one video.

    Attributes:
        video_id: prefix of the sequence ids (``<video_id>/track<k>``), or the sequence id
            itself when ``single`` is set.
        source: video file or image folder.
        frame_index: (F,) source frames the sequences run over, strictly increasing.
        det_pos: (N,) position in ``frame_index`` of each box, non-decreasing.
        boxes: (N, 4) xyxy px. scores: (N,) detector scores. track_ids: (N,) int, -1 = unknown.
        single: one person, one sequence spanning every frame (frames without a box invalid).
    """

    video_id: str
    source: str | os.PathLike
    frame_index: np.ndarray
    det_pos: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray
    single: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frame_index = np.asarray(self.frame_index, np.int64)
        self.det_pos = np.asarray(self.det_pos, np.int64)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, np.float32).reshape(n)
        self.track_ids = np.asarray(self.track_ids, np.int64).reshape(n)
        if self.det_pos.shape != (n,):
            raise ValueError(f"video {self.video_id!r}: {len(self.det_pos)} box positions for {n} boxes")
        if n and (np.any(np.diff(self.det_pos) < 0) or self.det_pos[0] < 0
                  or self.det_pos[-1] >= len(self.frame_index)):
            raise ValueError(f"video {self.video_id!r}: box positions must be sorted and inside "
                             f"0..{len(self.frame_index) - 1}")

    @property
    def tracked(self) -> bool:
        """Whether every box already carries a track id (then pose NMS is skipped)."""
        return bool(len(self.track_ids)) and bool((self.track_ids >= 0).all())

    def rows_of(self, pos: int) -> slice:
        """Slice of the boxes that belong to frame position ``pos``."""
        return slice(int(np.searchsorted(self.det_pos, pos, "left")),
                     int(np.searchsorted(self.det_pos, pos, "right")))

    @classmethod
    def from_single(cls, seq_id: str, source: str | os.PathLike, boxes: np.ndarray,
                    frame_index: np.ndarray | None = None, attrs: dict[str, Any] | None = None
                    ) -> "VideoDetections":
        """One person: (T, 4) xyxy boxes with NaN rows for frames without a box."""
        b = np.asarray(boxes, np.float32)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"sequence {seq_id!r}: boxes must be (T, 4), got {b.shape}")
        fi = np.arange(len(b)) if frame_index is None else np.asarray(frame_index)
        if len(fi) != len(b):
            raise ValueError(f"sequence {seq_id!r}: {len(b)} boxes for {len(fi)} frame indices")
        ok = np.flatnonzero(np.isfinite(b).all(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
        return cls(seq_id, source, fi, ok, b[ok], np.ones(len(ok)), np.zeros(len(ok)), True,
                   dict(attrs or {}))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) xyxy -> (n, m) intersection over union."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


class IoUTracker:
    """Frame-to-frame box tracker: Hungarian matching on IoU with each live track's last box.

    A box joins the track it overlaps most (optimal assignment, IoU >= ``iou_thresh``); the
    others start new tracks (ids 0, 1, 2, ... in order of appearance, boxes in input order).
    A track not matched for more than ``max_age`` frames ends; a person who comes back later
    gets a new id. No motion model and no appearance: good for slow, sparse scenes, expect id
    switches when people cross (use PoseTrack ids or a re-ID tracker then).
    """

    def __init__(self, iou_thresh: float = 0.3, max_age: int = 30) -> None:
        self.iou_thresh, self.max_age = float(iou_thresh), int(max_age)
        self.last_box: dict[int, np.ndarray] = {}
        self.last_pos: dict[int, int] = {}
        self.next_id = 0

    def update(self, pos: int, boxes: np.ndarray) -> np.ndarray:
        """Assign (n,) track ids to the (n, 4) boxes of frame position ``pos``."""
        for tid in [t for t, p in self.last_pos.items() if pos - p > self.max_age]:
            del self.last_box[tid], self.last_pos[tid]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        ids = np.full(len(boxes), -1, np.int64)
        live = sorted(self.last_box)
        if live and len(boxes):
            iou = box_iou(np.stack([self.last_box[t] for t in live]), boxes)
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= self.iou_thresh:
                    ids[c] = live[r]
        for c in range(len(boxes)):
            if ids[c] < 0:
                ids[c], self.next_id = self.next_id, self.next_id + 1
            self.last_box[int(ids[c])], self.last_pos[int(ids[c])] = boxes[c], pos
        return ids

    def ended(self, pos: int) -> list[int]:
        """Ids of tracks that can no longer continue at or after ``pos``."""
        return [t for t, p in self.last_pos.items() if pos - p > self.max_age]


def load_coco_frames(path: str | os.PathLike, n_frames: int, *, category_id: int = 1,
                     min_score: float = 0.0, image_id_offset: int = 0,
                     image_to_frame: Mapping[Any, int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every person box of a COCO detection JSON (list of ``{image_id, category_id, bbox
    [x,y,w,h], score}``), sorted by frame: (frame (N,), boxes xyxy (N, 4), scores (N,)).
    Frames map from ``image_id`` as :func:`poselift.extract.boxes.load_coco_detections` does."""
    path = Path(path)
    data = coco_detection_list(path)
    rows = []
    for k, det in enumerate(data):
        if not isinstance(det, dict) or "image_id" not in det or "bbox" not in det:
            raise BoxError(f"{path}: entry {k} lacks 'image_id' or 'bbox'")
        score = det_number(path, k, det, "score", 1.0)
        if det_number(path, k, det, "category_id", 1) != category_id or score < min_score:
            continue
        iid = det["image_id"]
        frame = (image_to_frame.get(iid) if image_to_frame is not None
                 else _frame_of_image_id(iid, image_id_offset))
        if frame is None or not 0 <= frame < n_frames:
            raise BoxError(f"{path}: entry {k}: image_id {iid!r} maps to frame {frame}, outside the "
                           f"video's {n_frames} frames{frame_hint(iid, image_id_offset)}")
        bb = det_bbox(path, k, det)
        if bb[2] > 0 and bb[3] > 0:
            rows.append((frame, k, to_xyxy(bb, "xywh"), score))
    rows.sort(key=lambda r: (r[0], r[1]))  # stable: file order within a frame
    frames = np.array([r[0] for r in rows], np.int64)
    boxes = np.array([r[2] for r in rows], np.float32).reshape(-1, 4)
    return frames, boxes, np.array([r[3] for r in rows], np.float32)


def load_posetrack_frames(path: str | os.PathLike, n_frames: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PoseTrack JSON -> (frame (N,), boxes (N, 4), scores (N,), track ids (N,)), by frame then id."""
    tracks = load_posetrack_tracks(path, n_frames)
    rows = [(int(f), tid, t.boxes[f], t.scores[f]) for tid, t in tracks.items()
            for f in np.flatnonzero(t.valid)]
    rows.sort(key=lambda r: (r[0], r[1]))
    return (np.array([r[0] for r in rows], np.int64), np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
            np.array([r[3] for r in rows], np.float32), np.array([r[1] for r in rows], np.int64))


def detections_from_tracks(video_id: str, source: str | os.PathLike, n_frames: int, frames: np.ndarray,
                           boxes: np.ndarray, scores: np.ndarray, track_ids: np.ndarray | None = None,
                           attrs: dict[str, Any] | None = None) -> VideoDetections:
    """Per-box arrays (frames are source frame numbers 0..n_frames-1) -> VideoDetections."""
    tid = np.full(len(boxes), -1, np.int64) if track_ids is None else track_ids
    return VideoDetections(video_id, source, np.arange(n_frames), frames, boxes, scores, tid,
                           False, dict(attrs or {}))


def split_tracks(det: VideoDetections, tracker: IoUTracker | None = None
                 ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Per track: (track id, frame positions first..last (T,), boxes (T, 4) with NaN gaps).

    Boxes without ids are tracked with ``tracker`` (a fresh :class:`IoUTracker` by default);
    two boxes with the same id in one frame keep the higher-scoring one.
    """
    ids = det.track_ids.copy()
    if not det.tracked:
        tr = tracker or IoUTracker()
        for pos in np.unique(det.det_pos):
            sl = det.rows_of(int(pos))
            ids[sl] = tr.update(int(pos), det.boxes[sl])
    out = []
    for tid in np.unique(ids):
        rows = np.flatnonzero(ids == tid)
        rows = rows[np.argsort(-det.scores[rows], kind="stable")]
        first, last = int(det.det_pos[rows].min()), int(det.det_pos[rows].max())
        boxes = np.full((last - first + 1, 4), np.nan, np.float32)
        for r in rows[::-1]:  # best score written last wins
            boxes[det.det_pos[r] - first] = det.boxes[r]
        out.append((int(tid), np.arange(first, last + 1), boxes))
    return out
