"""Inputs of ``poselift infer``: videos / image folders, tolerant frame reading, and 2D results
brought from elsewhere (AlphaPose result JSON, COCO keypoint JSON, a poselift keypoint cache).

A corrupt frame in the middle of a video must not stop the run: :func:`read_frames` yields
``None`` for it and records its index, and every stage treats it as a frame without a person.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from poselift.core.errors import UserError
from poselift.extract.video import IMAGE_EXTENSIONS, ImageFolderSource, VideoError, VideoSource

__all__ = ["VideoInput", "list_inputs", "read_frames", "Person2D", "load_2d_json", "frame_names", "InputError"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class InputError(UserError, ValueError):
    """Bad input files; the message names the file and the field."""


@dataclass
class VideoInput:
    """One video (file or image folder): id, path, frame count, fps, (width, height)."""

    video_id: str
    path: Path
    n_frames: int
    fps: float
    size: tuple[int, int]
    corrupt: list[int] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        """What must be equal for a re-run to reuse this video's caches."""
        st = self.path.stat()
        return {"video_id": self.video_id, "path": str(self.path.resolve()), "bytes": int(st.st_size),
                "mtime_ns": int(st.st_mtime_ns), "n_frames": self.n_frames}


def _probe(path: Path) -> tuple[int, float, tuple[int, int]]:
    if path.is_dir():
        src = ImageFolderSource(path)
        for i in range(len(src)):  # the first readable image gives the size
            try:
                img = src._read(i)
            except VideoError:
                continue
            return len(src), 25.0, (img.shape[1], img.shape[0])
        raise InputError(f"{path}: none of the {len(src)} images can be decoded")
    src = VideoSource(path)
    if src.num_frames <= 0:
        raise InputError(f"{path}: the container reports no frame count; re-encode the video")
    return src.num_frames, src.fps or 25.0, src.size


def list_inputs(paths: list[str | os.PathLike]) -> list[VideoInput]:
    """Expand the command's arguments: a video file, a folder of videos, or an image folder
    (one video). Ids are file stems, made unique with a numeric suffix."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            vids = sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_EXTENSIONS)
            imgs = [q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS]
            if vids:
                found += vids
            elif imgs:
                found.append(p)
            else:
                raise InputError(f"{p}: folder holds neither videos ({', '.join(VIDEO_EXTENSIONS)}) "
                                 f"nor images")
        else:
            found.append(p)
    out: list[VideoInput] = []
    seen: set[str] = set()
    for p in found:
        vid = re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem if p.is_file() else p.name) or "video"
        base, k = vid, 1
        while vid in seen:
            vid, k = f"{base}_{k}", k + 1
        seen.add(vid)
        n, fps, size = _probe(p)
        out.append(VideoInput(vid, p, n, fps, size))
    return out


def read_frames(video: VideoInput) -> Iterator[tuple[int, np.ndarray | None]]:
    """Every frame in order as ``(index, BGR uint8 or None)``; ``None`` = undecodable (its
    index is appended to ``video.corrupt``). Reading goes on after a bad frame."""
    video.corrupt.clear()
    if video.path.is_dir():
        src = ImageFolderSource(video.path)
        for i in range(len(src)):
            try:
                yield i, src._read(i)
            except VideoError:
                video.corrupt.append(i)
                yield i, None
        return
    cap = cv2.VideoCapture(str(video.path))
    try:
        misses = 0
        for i in range(video.n_frames):
            ok, frame = cap.read()
            if ok and frame is not None:
                misses = 0
                yield i, frame
                continue
            video.corrupt.append(i)
            misses += 1
            yield i, None
            if misses >= 25:  # the stream really ended early: the rest is missing, not corrupt
                for j in range(i + 1, video.n_frames):
                    video.corrupt.append(j)
                    yield j, None
                return
    finally:
        cap.release()


@dataclass
class Person2D:
    """Every 2D person of one video from a file: flat rows over people-in-frames."""

    frame: np.ndarray      # (N,) int64 frame index
    keypoints: np.ndarray  # (N, K, 2) float32 px
    scores: np.ndarray     # (N, K) float32
    boxes: np.ndarray      # (N, 4) float32 xyxy px
    box_score: np.ndarray  # (N,) float32
    track: np.ndarray      # (N,) int64, -1 = no id in the file
    joint_set: str


_BY_K = {17: "coco17", 26: "halpe26", 136: "halpe136"}


def _frame_of(image_id: Any, names: dict[str, int], where: str) -> int:
    if isinstance(image_id, (int, np.integer)):
        return int(image_id)
    s = str(image_id)
    if s in names:
        return names[s]
    m = re.search(r"(\d+)(?=\.\w+$|$)", s)
    if m is None:
        raise InputError(f"{where}: field 'image_id' {image_id!r} names no frame number")
    return int(m.group(1))


def frame_names(video: VideoInput) -> dict[str, int]:
    """Image folder: file name -> frame index (AlphaPose names frames by their file); {} for a video."""
    return {f.name: i for i, f in enumerate(ImageFolderSource(video.path).files)} if video.path.is_dir() else {}


def load_2d_json(path: str | os.PathLike, n_frames: int, names: dict[str, int] | None = None) -> Person2D:
    """AlphaPose result JSON (a list of person entries, ``idx`` = track id when tracked) or
    COCO keypoint JSON (a dict with ``annotations`` and optionally ``images`` naming the
    frames) -> :class:`Person2D`. ``image_id`` / ``file_name`` values found in ``names`` (an
    image folder's file names) map to that frame, others by the number in them. Boxes missing
    from the file are the keypoints' extent."""
    files = dict(names or {})
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not a readable JSON file ({e})") from None
    names = {}
    if isinstance(doc, dict):
        if "annotations" not in doc:
            raise InputError(f"{p}: a JSON object without 'annotations' is not COCO keypoint JSON")
        for img in doc.get("images", []):
            if "id" in img and "file_name" in img:
                names[str(img["id"])] = _frame_of(img["file_name"], files, f"{p}: images")
        entries = doc["annotations"]
    elif isinstance(doc, list):
        entries = doc
    else:
        raise InputError(f"{p}: expected a list (AlphaPose) or an object (COCO), got {type(doc).__name__}")
    rows: dict[str, list] = {k: [] for k in ("frame", "kp", "sc", "box", "bs", "tr")}
    k_seen = None
    for i, e in enumerate(entries):
        where = f"{p}: entry {i}"
        if not isinstance(e, dict) or "keypoints" not in e or "image_id" not in e:
            raise InputError(f"{where}: needs fields 'image_id' and 'keypoints'")
        if e.get("category_id", 1) != 1:
            continue
        flat = np.asarray(e["keypoints"], np.float64)
        if flat.ndim != 1 or flat.size % 3 or flat.size // 3 not in _BY_K:
            raise InputError(f"{where}: field 'keypoints' has {flat.size} numbers; expected 3 x "
                             f"(17, 26 or 136)")
        k = flat.size // 3
        if k_seen is not None and k != k_seen:
            raise InputError(f"{where}: field 'keypoints' has {k} joints, earlier entries {k_seen}")
        k_seen = k
        kp = flat.reshape(k, 3)
        f = _frame_of(names.get(str(e["image_id"]), e["image_id"]), files, where)
        if not 0 <= f < n_frames:
            continue  # detections past the decodable end have no frame to go with
        if "box" in e or "bbox" in e:
            x, y, w, h = np.asarray(e.get("box", e.get("bbox")), np.float64)[:4]
            box = [x, y, x + w, y + h]
        else:
            vis = kp[kp[:, 2] > 0] if (kp[:, 2] > 0).any() else kp
            box = [*vis[:, :2].min(0), *vis[:, :2].max(0)]
        rows["frame"].append(f)
        rows["kp"].append(kp[:, :2])
        rows["sc"].append(kp[:, 2])
        rows["box"].append(box)
        rows["bs"].append(float(e.get("score", 1.0)))
        rows["tr"].append(int(e["idx"]) if isinstance(e.get("idx"), (int, float)) else
                          int(e["track_id"]) if isinstance(e.get("track_id"), (int, float)) else -1)
    k = k_seen or 17
    order = np.argsort(np.asarray(rows["frame"], np.int64), kind="stable")
    def arr(key: str, shape: tuple, dt: Any) -> np.ndarray:
        a = np.asarray(rows[key], dt).reshape(shape)
        return a[order]
    n = len(rows["frame"])
    return Person2D(arr("frame", (n,), np.int64), arr("kp", (n, k, 2), np.float32),
                    arr("sc", (n, k), np.float32), arr("box", (n, 4), np.float32),
                    arr("bs", (n,), np.float32), arr("tr", (n,), np.int64), _BY_K[k])


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file or, for a folder, of its sorted file names and sizes."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for q in sorted(p.iterdir()):
            h.update(f"{q.name}|{q.stat().st_size};".encode())
        return h.hexdigest()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
