"""Result files of ``poselift infer`` per video: ``poses3d.npz``, one JSON per track, and the 2D
results as an AlphaPose result JSON (``alphapose-results.json``, inference.md §2)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from poselift.datasets.joints import get_joint_set

__all__ = ["TrackResult", "write_npz", "write_track_json", "write_alphapose_json"]


@dataclass
class TrackResult:
    """One lifted track. Frames are source frame indices; ``detected`` is False where the 2D pose
    was interpolated. ``joints3d`` (T, J, 3) metres in the camera frame (root-relative unless
    ``root_relative`` is False: a trajectory model added the root position)."""

    video_id: str
    seq_id: str
    track_id: int
    frames: np.ndarray
    detected: np.ndarray
    boxes: np.ndarray
    kp2d: np.ndarray
    scores2d: np.ndarray
    joint_set_2d: str
    joints3d: np.ndarray
    joint_set_3d: str
    root_relative: bool
    proposal: np.ndarray | None = None


def _r(x: np.ndarray, nd: int = 4) -> Any:
    """Rounded nested lists; NaN -> None so the file is valid JSON."""
    a = np.round(np.asarray(x, np.float64), nd)
    return [(_r(v, nd) if np.ndim(v) else (None if not np.isfinite(v) else float(v))) for v in a]


def write_npz(path: Path, tracks: list[TrackResult], meta: dict[str, Any], joint_set_3d: str) -> None:
    """Concatenated per-track arrays with ``lengths`` / ``track_ids`` to split them again."""
    j3 = get_joint_set(joint_set_3d).names
    cat = (lambda xs, shape, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt))
    tmp = path.with_name(path.name + ".tmp.npz")  # written whole, then renamed over the old file
    np.savez(tmp, joints_3d=cat([t.joints3d for t in tracks], (0, len(j3), 3), np.float32),
             keypoints_2d=cat([t.kp2d for t in tracks], (0, 0, 2), np.float32),
             scores_2d=cat([t.scores2d for t in tracks], (0, 0), np.float32),
             boxes=cat([t.boxes for t in tracks], (0, 4), np.float32),
             frame_index=cat([t.frames for t in tracks], (0,), np.int64),
             detected=cat([t.detected for t in tracks], (0,), bool),
             lengths=np.array([len(t.frames) for t in tracks], np.int64),
             track_ids=np.array([t.track_id for t in tracks], np.int64),
             seq_ids=np.array([t.seq_id for t in tracks], dtype=str),
             joint_names_3d=np.array(j3, dtype=str), meta=np.array(json.dumps(meta)))
    tmp.replace(path)


def write_track_json(path: Path, t: TrackResult, meta: dict[str, Any]) -> None:
    doc = {
        **meta, "video_id": t.video_id, "seq_id": t.seq_id, "track_id": t.track_id,
        "joint_set_2d": t.joint_set_2d, "joint_set_3d": t.joint_set_3d,
        "joint_names_3d": list(get_joint_set(t.joint_set_3d).names),
        "units": {"boxes": "px xyxy", "keypoints_2d": "px [x, y, score]", "joints_3d": "m, camera frame"},
        "root_relative": t.root_relative,
        "frame_ids": [int(f) for f in t.frames], "detected": [bool(d) for d in t.detected],
        "boxes": _r(t.boxes, 2),
        "keypoints_2d": _r(np.concatenate([t.kp2d, t.scores2d[..., None]], -1), 3),
        "joints_3d": _r(t.joints3d, 4),
    }
    path.write_text(json.dumps(doc))


def write_alphapose_json(path: Path, tracks: list[TrackResult]) -> int:
    """One entry per person per detected frame, sorted by frame; returns the entry count."""
    out = []
    for t in tracks:
        for i in np.flatnonzero(t.detected):
            kp = np.concatenate([t.kp2d[i], t.scores2d[i][:, None]], -1).reshape(-1)
            b = t.boxes[i]
            sc = t.scores2d[i]
            score = float(t.proposal[i]) if t.proposal is not None and t.proposal[i] else \
                float(sc.mean() + 1.25 * sc.max())
            e = {"image_id": f"{int(t.frames[i])}.jpg", "category_id": 1,
                 "keypoints": [round(float(v), 3) for v in kp], "score": round(score, 4),
                 "idx": int(t.track_id)}
            if np.isfinite(b).all():
                e["box"] = [round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2] - b[0]), 2),
                            round(float(b[3] - b[1]), 2)]
            out.append((int(t.frames[i]), e))
    out.sort(key=lambda x: x[0])
    path.write_text(json.dumps([e for _, e in out]))
    return len(out)
