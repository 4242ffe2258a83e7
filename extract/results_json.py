"""A ``keypoints2d`` cache as AlphaPose's result JSON (``alphapose-results.json``).

One entry per person per frame with a usable box: ``image_id`` (the frame's file name as
AlphaPose's video mode writes it, ``"<frame>.jpg"``; prefixed with ``"<video id>/"`` when the
cache holds several videos, so entries of different videos never collide), ``category_id`` 1,
``keypoints`` flat ``[x1, y1, s1, ...]`` in image pixels, ``score`` (the proposal score the
extraction stored: P-NMS's mean + box + 1.25·max), ``box`` ``[x, y, w, h]`` and ``idx`` (the
track id). ``poselift-evaluate keypoints`` reads these files back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from poselift.datasets.cache import Cache

__all__ = ["alphapose_entries", "write_alphapose_results"]


def _video_of(seq_id: str, attrs: dict[str, Any]) -> str:
    return str(attrs.get("video_id") or seq_id.split("/track")[0])


def alphapose_entries(cache_path: str | os.PathLike, seq_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entries of the sequences ``seq_ids`` (default: all) of a keypoints cache, sorted by video
    and frame. Rows marked invalid (no usable box) are left out."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    with Cache(cache_path, kind="keypoints2d") as cache:
        ids = list(cache.ids if seq_ids is None else seq_ids)
        videos = {_video_of(s, cache.info(s).attrs) for s in ids}
        for sid in ids:
            info = cache.info(sid)
            kp = cache.read(sid, "keypoints")            # (T, J, 2) image pixels
            sc = cache.read(sid, "scores")               # (T, J)
            boxes = cache.read(sid, "boxes")             # (T, 4) xyxy
            frames = cache.read(sid, "frame_index")      # (T,)
            valid = cache.read(sid, "valid") if "valid" in info.fields else np.ones(len(kp), bool)
            prop = cache.read(sid, "proposal_score") if "proposal_score" in info.fields else None
            tids = cache.read(sid, "track_id") if "track_id" in info.fields else None
            video = _video_of(sid, info.attrs)
            prefix = f"{video}/" if len(videos) > 1 else ""
            for i in np.flatnonzero(valid):
                s = sc[i]
                score = float(prop[i]) if prop is not None else float(s.mean() + 1.25 * s.max())
                e: dict[str, Any] = {
                    "image_id": f"{prefix}{int(frames[i])}.jpg", "category_id": 1,
                    "keypoints": [round(float(v), 3) for v in
                                  np.concatenate([kp[i], s[:, None]], -1).reshape(-1)],
                    "score": round(score, 4)}
                b = boxes[i]
                if np.isfinite(b).all():
                    e["box"] = [round(float(b[0]), 2), round(float(b[1]), 2),
                                round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)]
                tid = int(tids[i]) if tids is not None else int(info.attrs.get("track_id", -1))
                if tid >= 0:
                    e["idx"] = tid
                out.append((video, int(frames[i]), e))
    out.sort(key=lambda r: (r[0], r[1]))
    return [e for _, _, e in out]


def write_alphapose_results(cache_path: str | os.PathLike, out_path: str | os.PathLike,
                            seq_ids: Sequence[str] | None = None) -> int:
    """Write :func:`alphapose_entries` to ``out_path`` (atomically); returns the entry count."""
    entries = alphapose_entries(cache_path, seq_ids)
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, out)
    return len(entries)
