"""Person boxes per frame: from arrays, COCO detection JSON, PoseTrack JSON or 2D joints.

Everything returns ``BoxTrack``: boxes (T, 4) float32 **xyxy pixels**, NaN rows where a frame has
no box, and ``valid`` (T,). Array inputs declare their layout explicitly: ``"cxcywh"`` is the
VideoPose3D/TCMR layout ``[cx, cy, w, h]`` (TCMR's ``bbox``), ``"xywh"`` is COCO's
``[x, y, w, h]`` and ``"xyxy"`` corners.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import ndimage, signal

from poselift.core.errors import UserError

__all__ = ["BoxError", "BoxTrack", "to_xyxy", "xyxy_to_cxcywh", "boxes_from_array",
           "load_coco_detections", "load_posetrack_tracks", "smooth_boxes", "smooth_box_params",
           "joints_to_box_params", "boxes_from_joints", "BOX_FORMATS"]

BOX_FORMATS = ("xyxy", "cxcywh", "xywh")


class BoxError(UserError, ValueError):
    """Bad or missing boxes; messages name the file, frame and entry."""


@dataclass
class BoxTrack:
    """One person's boxes over a video: ``boxes`` (T, 4) xyxy px (NaN = none), ``valid`` (T,),
    ``scores`` (T,), ``frame_index`` (T,) source frame of each row, ``track_id``."""

    boxes: np.ndarray
    valid: np.ndarray
    scores: np.ndarray
    frame_index: np.ndarray
    track_id: int = 0

    def __len__(self) -> int:
        return len(self.boxes)

    def require_boxes(self, what: str = "sequence") -> None:
        """Raise ``BoxError`` if not a single frame has a box."""
        if not self.valid.any():
            raise BoxError(f"{what}: no frame has a person box (track {self.track_id}, "
                           f"{len(self.boxes)} frames)")


def to_xyxy(arr: np.ndarray, fmt: str) -> np.ndarray:
    """(..., 4) boxes in ``fmt`` -> xyxy float32."""
    a = np.asarray(arr, dtype=np.float64)
    if a.shape[-1] != 4:
        raise BoxError(f"boxes ({fmt}) need shape (T, 4), one row per frame; got shape {a.shape}")
    if fmt == "xyxy":
        out = a
    elif fmt == "cxcywh":
        half = a[..., 2:] / 2.0
        out = np.concatenate([a[..., :2] - half, a[..., :2] + half], axis=-1)
    elif fmt == "xywh":
        out = np.concatenate([a[..., :2], a[..., :2] + a[..., 2:]], axis=-1)
    else:
        raise BoxError(f"unknown box format {fmt!r}; expected one of {BOX_FORMATS}")
    return out.astype(np.float32)


def xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([(b[..., :2] + b[..., 2:]) / 2.0, b[..., 2:] - b[..., :2]], axis=-1)


def boxes_from_array(arr: np.ndarray, fmt: str, track_id: int = 0) -> BoxTrack:
    """(T, 4) array in ``fmt`` -> BoxTrack; rows with NaN or zero size are invalid."""
    xyxy = to_xyxy(arr, fmt)
    if xyxy.ndim != 2:
        raise BoxError(f"expected a (T, 4) box array, got shape {np.shape(arr)}")
    valid = np.isfinite(xyxy).all(1) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy[~valid] = np.nan
    t = len(xyxy)
    return BoxTrack(xyxy, valid, valid.astype(np.float32), np.arange(t, dtype=np.int64), track_id)


def _frame_of_image_id(image_id: Any, offset: int) -> int | None:
    if isinstance(image_id, (int, np.integer)):
        return int(image_id) - offset
    m = re.search(r"(\d+)(?!.*\d)", Path(str(image_id)).stem)  # last digit run of the name
    return int(m.group(1)) - offset if m else None


def det_number(path: Path, k: int, det: dict, field: str, default: float) -> float:
    """Numeric field of detection entry ``k``; a non-number names file, entry and field."""
    v = det.get(field, default)
    try:
        if isinstance(v, bool):
            raise TypeError
        return float(v)
    except (TypeError, ValueError):
        raise BoxError(f"{path}: entry {k}: field {field!r} must be a number, got {v!r}") from None


def det_bbox(path: Path, k: int, det: dict) -> np.ndarray:
    """The ``bbox`` [x, y, w, h] of detection entry ``k`` as float64 (4,)."""
    try:
        bb = np.asarray(det["bbox"], dtype=np.float64)
    except (TypeError, ValueError):
        bb = None
    if bb is None or bb.shape != (4,) or not np.isfinite(bb).all():
        raise BoxError(f"{path}: entry {k}: field 'bbox' must be 4 finite numbers [x, y, w, h], "
                       f"got {det['bbox']!r}")
    return bb


def frame_hint(iid: Any, offset: int) -> str:
    """Advice for an image id that lands outside the video (PoseTrack18 ids are huge)."""
    if isinstance(iid, (int, np.integer)) and int(iid) > 1_000_000 and not offset:
        return (" (large integer image ids, e.g. PoseTrack18's 1VVVVVVFFFF: pass --image-id-offset "
                "with the id of the video's first frame)")
    return ""


def _load_json(path: Path) -> Any:
    if not path.exists():
        raise BoxError(f"{path}: box file does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BoxError(f"{path}: not valid JSON ({e})") from e


def coco_detection_list(path: Path) -> list:
    """The detection entries of a COCO-style results file (a list, or a dict's 'annotations')."""
    data = _load_json(path)
    if isinstance(data, dict) and "annotations" in data:
        data = data["annotations"]
    if not isinstance(data, list):
        raise BoxError(f"{path}: expected a list of detections (or a dict with 'annotations')")
    return data


def load_coco_detections(path: str | os.PathLike, n_frames: int, *, category_id: int = 1,
                         min_score: float = 0.0, image_id_offset: int = 0,
                         image_to_frame: Mapping[Any, int] | None = None,
                         select: str = "score") -> BoxTrack:
    """COCO-style detection results (a list of ``{image_id, category_id, bbox [x,y,w,h], score}``)
    -> one box per frame, picking the best detection by ``select`` ('score' or 'area').

    The frame of an entry is ``image_to_frame[image_id]`` if a mapping is given, otherwise
    ``image_id - image_id_offset`` for integer ids, or the last number in a string id such as
    ``"000123.jpg"``. Frames without a person detection get NaN and ``valid=False``.
    """
    path = Path(path)
    data = coco_detection_list(path)
    if select not in ("score", "area"):
        raise BoxError(f"select must be 'score' or 'area', got {select!r}")
    boxes = np.full((n_frames, 4), np.nan, np.float32)
    best = np.full(n_frames, -np.inf)
    scores = np.zeros(n_frames, np.float32)
    for k, det in enumerate(data):
        if not isinstance(det, dict) or "image_id" not in det or "bbox" not in det:
            raise BoxError(f"{path}: entry {k} lacks 'image_id' or 'bbox'")
        if det_number(path, k, det, "category_id", 1) != category_id:
            continue
        score = det_number(path, k, det, "score", 1.0)
        if score < min_score:
            continue
        iid = det["image_id"]
        frame = image_to_frame.get(iid) if image_to_frame is not None else _frame_of_image_id(
            iid, image_id_offset)
        if frame is None:
            raise BoxError(f"{path}: entry {k}: image_id {iid!r} cannot be mapped to a frame index")
        if not 0 <= frame < n_frames:
            raise BoxError(f"{path}: entry {k} (image_id {iid!r}) refers to frame {frame}, but the "
                           f"video has {n_frames} frames{frame_hint(iid, image_id_offset)}")
        bb = det_bbox(path, k, det)
        if bb[2] <= 0 or bb[3] <= 0:
            continue  # degenerate detections carry no crop
        key = score if select == "score" else bb[2] * bb[3]
        if key > best[frame]:
            best[frame], scores[frame] = key, score
            boxes[frame] = to_xyxy(bb, "xywh")
    valid = np.isfinite(boxes).all(1)
    return BoxTrack(boxes, valid, scores, np.arange(n_frames, dtype=np.int64), 0)


def load_posetrack_tracks(path: str | os.PathLike, n_frames: int | None = None) -> dict[int, BoxTrack]:
    """PoseTrack JSON (``images`` + ``annotations`` with ``track_id``, ``image_id``, ``bbox``
    [x,y,w,h]) -> one BoxTrack per track id, spanning the whole video.

    Frame ``i`` is the ``i``-th entry of ``images`` sorted by ``frame_id`` (or ``file_name`` when
    there is none). Annotations without a bbox but with ``keypoints`` get the TCMR joint box.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise BoxError(f"{path}: a PoseTrack file needs 'images' and 'annotations'")
    images = sorted(data["images"], key=lambda im: (im.get("frame_id", 0), str(im.get("file_name", ""))))
    frame_of = {im["id"]: i for i, im in enumerate(images)}
    total = len(images) if n_frames is None else int(n_frames)
    tracks: dict[int, BoxTrack] = {}
    for k, ann in enumerate(data["annotations"]):
        if "track_id" not in ann or "image_id" not in ann:
            raise BoxError(f"{path}: annotation {k} lacks 'track_id' or 'image_id'")
        frame = frame_of.get(ann["image_id"])
        if frame is None:
            raise BoxError(f"{path}: annotation {k}: image_id {ann['image_id']!r} is not in 'images'")
        if frame >= total:
            raise BoxError(f"{path}: annotation {k} refers to frame {frame}, but the video has "
                           f"{total} frames")
        box = _posetrack_box(path, k, ann)
        if box is None:
            continue
        tid = int(ann["track_id"])
        if tid not in tracks:
            tracks[tid] = BoxTrack(np.full((total, 4), np.nan, np.float32), np.zeros(total, bool),
                                   np.zeros(total, np.float32), np.arange(total, dtype=np.int64), tid)
        t = tracks[tid]
        t.boxes[frame], t.valid[frame], t.scores[frame] = box, True, float(ann.get("score", 1.0))
    return tracks


def _posetrack_box(path: Path, k: int, ann: dict) -> np.ndarray | None:
    bb = ann.get("bbox")
    if bb is not None and len(bb) == 4:
        b = to_xyxy(np.asarray(bb, np.float64), "xywh")
        if not np.isfinite(b).all():
            raise BoxError(f"{path}: annotation {k}: bbox {bb} is not finite")
        return b if b[2] > b[0] and b[3] > b[1] else None
    kp = ann.get("keypoints")
    if kp:
        params, start, _ = joints_to_box_params(np.asarray(kp, np.float64).reshape(1, -1, 3))
        if start < 0:
            return None
        return _params_to_xyxy(params, 1.1)[0]
    raise BoxError(f"{path}: annotation {k} has neither 'bbox' nor 'keypoints'")


# -- TCMR/VIBE joint boxes and smoothing ---------------------------------------------------------

def _joint_param(kp: np.ndarray, conf_thresh: float) -> np.ndarray | None:
    vis = kp[:, 2] > conf_thresh
    if not vis.any():
        return None
    lo, hi = kp[vis, :2].min(0), kp[vis, :2].max(0)
    diag = float(np.linalg.norm(hi - lo))
    if diag < 0.5:
        return None  # a single visible joint gives no usable extent
    c = (lo + hi) / 2.0
    return np.array([c[0], c[1], 150.0 / diag])  # 150/diag: the reference's "scale" parameter


def joints_to_box_params(kp2d: np.ndarray, conf_thresh: float = 0.3) -> tuple[np.ndarray, int, int]:
    """Per-frame box parameters [cx, cy, 150 / diagonal] from 2D joints (T, J, 3) with
    confidences, the TCMR/VIBE way: joints with conf > ``conf_thresh``; frames without any are
    linearly interpolated between their neighbours. Returns (params (end-start, 3), start, end):
    frames before the first and after the last usable frame are cut (start = -1 if none)."""
    kp2d = np.asarray(kp2d, dtype=np.float64)
    if kp2d.ndim != 3 or kp2d.shape[2] != 3:
        raise BoxError(f"joints must be (T, J, 3) with a confidence column, got shape {kp2d.shape}")
    rows: list[np.ndarray] = []
    start, gap, last = -1, 0, -1
    for i, kp in enumerate(kp2d):
        p = _joint_param(kp, conf_thresh)
        if p is None:
            gap += 1
            continue
        if start < 0:
            start, gap = i, 0
        if gap > 0:  # fill the hole linearly between the last and this frame
            lin = np.linspace(rows[-1], p, gap + 2)[1:-1]
            rows.extend(lin)
            gap = 0
        rows.append(p)
        last = i
    if start < 0:
        return np.zeros((0, 3)), -1, -1
    return np.asarray(rows), start, last + 1


def smooth_box_params(params: np.ndarray, median_k: int = 11, sigma: float = 8.0) -> np.ndarray:
    """Median filter (scipy.signal.medfilt, zero-padded) then Gaussian (scipy.ndimage, reflect)
    over time, per column of (T, C) params, exactly as TCMR smooths its joint boxes."""
    p = np.asarray(params, dtype=np.float64)
    med = np.stack([signal.medfilt(col, median_k) for col in p.T], axis=1)
    return np.stack([ndimage.gaussian_filter(col, sigma) for col in med.T], axis=1)


def _params_to_xyxy(params: np.ndarray, side_factor: float) -> np.ndarray:
    side = 150.0 / params[:, 2] * side_factor
    cxcywh = np.stack([params[:, 0], params[:, 1], side, side], axis=1)
    return to_xyxy(cxcywh, "cxcywh")


def boxes_from_joints(kp2d: np.ndarray, *, conf_thresh: float = 0.3, side_factor: float = 1.1,
                      smooth: bool = True, median_k: int = 11, sigma: float = 8.0) -> BoxTrack:
    """TCMR's ground-truth-joint boxes: square, centred on the visible-joint extent, side =
    ``side_factor`` x its diagonal (1.1 for 3DPW, 0.9 for TCMR's tight H36M), optionally smoothed
    (median k=11 then Gaussian sigma=8 on [cx, cy, 150/diag]). kp2d: (T, J, 3) px + confidence.
    Frames outside the first..last usable frame are NaN / invalid."""
    kp2d = np.asarray(kp2d)
    t = len(kp2d)
    params, start, end = joints_to_box_params(kp2d, conf_thresh)
    boxes = np.full((t, 4), np.nan, np.float32)
    valid = np.zeros(t, bool)
    if start >= 0:
        if smooth:
            params = smooth_box_params(params, median_k, sigma)
        boxes[start:end] = _params_to_xyxy(params, side_factor)
        valid[start:end] = True
    return BoxTrack(boxes, valid, valid.astype(np.float32), np.arange(t, dtype=np.int64), 0)


def smooth_boxes(track: BoxTrack, median_k: int = 11, sigma: float = 8.0) -> BoxTrack:
    """Temporal smoothing of arbitrary xyxy boxes: gaps inside the track are linearly
    interpolated (as TCMR does for joint boxes), then [cx, cy, w, h] go through the same median +
    Gaussian filters. Frames before the first / after the last box stay invalid."""
    idx = np.flatnonzero(track.valid)
    if idx.size == 0:
        track.require_boxes("smooth_boxes")
    s, e = int(idx[0]), int(idx[-1]) + 1
    c = xyxy_to_cxcywh(track.boxes.astype(np.float64))
    t_all = np.arange(s, e)
    filled = np.stack([np.interp(t_all, idx, c[idx, j]) for j in range(4)], axis=1)
    if e - s < median_k:
        warnings.warn(f"smooth_boxes: track {track.track_id} has only {e - s} frames (< median "
                      f"kernel {median_k}); zero padding dominates the median filter", stacklevel=2)
    sm = smooth_box_params(filled, median_k, sigma)
    boxes = np.full_like(track.boxes, np.nan)
    boxes[s:e] = to_xyxy(sm, "cxcywh")
    valid = np.zeros_like(track.valid)
    valid[s:e] = True
    return BoxTrack(boxes, valid, track.scores.copy(), track.frame_index.copy(), track.track_id)
