"""Manifest entries (video or image folder + box file per sequence) -> sequence specs, and the
decode-worker default, shared by ``poselift-extract features`` / ``keypoints`` and
``poselift-extract-dist``."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["load_manifest", "resolve_workers", "report_failures"]


def _read_boxes(path: Path, fmt: str, source: str, track_id: int | None, min_score: float) -> dict[int | None, Any]:
    """{track id or None: BoxTrack} from a box file."""
    from .boxes import BoxError, boxes_from_array, load_coco_detections, load_posetrack_tracks
    from .video import open_source

    if fmt in ("coco", "posetrack"):
        n = len(open_source(source))
        if fmt == "coco":
            return {None: load_coco_detections(path, n, min_score=min_score)}
        tracks = load_posetrack_tracks(path, n)
        if track_id is not None:
            if track_id not in tracks:
                raise BoxError(f"{path}: no track {track_id} (tracks: {sorted(tracks)})")
            return {None: tracks[track_id]}
        return dict(tracks)
    if not path.exists():
        raise BoxError(f"{path}: box file does not exist")
    if path.suffix == ".json":
        raise BoxError(f"{path}: a JSON box file needs box format 'coco' or 'posetrack', not {fmt!r}")
    if path.suffix == ".npz":
        with np.load(path) as z:
            key = next((k for k in ("boxes", "bbox", "bboxes") if k in z.files), None)
            if key is None:
                raise BoxError(f"{path}: no 'boxes' or 'bbox' array (has {z.files})")
            arr = z[key]
    else:
        arr = np.load(path, allow_pickle=False)
    return {None: boxes_from_array(arr, fmt)}


def load_manifest(entries: Sequence[dict[str, Any]], base: Path, *, smooth: bool = False,
                  min_score: float = 0.0) -> list:
    """Manifest entries -> SequenceSpec list (relative paths resolved against ``base``)."""
    from .boxes import smooth_boxes
    from .features import SequenceSpec

    specs = []
    for k, e in enumerate(entries):
        missing = [f for f in ("seq_id", "source", "boxes") if f not in e]
        if missing:
            raise ValueError(f"manifest entry {k}: missing field(s) {missing}")
        source = str(base / e["source"])
        tracks = _read_boxes(base / e["boxes"], e.get("box_format", "xyxy"), source,
                             e.get("track_id"), min_score)
        frames = np.load(base / e["frame_index"]) if e.get("frame_index") else None
        for tid, tr in tracks.items():
            if smooth:
                tr = smooth_boxes(tr)
            sid = e["seq_id"] if tid is None else f"{e['seq_id']}/{tid}"
            attrs = dict(e.get("attrs", {}))
            if tid is not None:
                attrs["track_id"] = int(tid)
            specs.append(SequenceSpec(sid, source, tr.boxes, frames, attrs))
    return specs


def resolve_workers(workers: int | None, device: str) -> int:
    """``--workers`` default: decode in-process on CPU (measured: end-to-end 1.00 of forward-only
    with 0 workers vs 0.89 with 1 on 2 cores), parallel decoding when a GPU runs the model."""
    if workers is not None:
        return workers
    return 0 if not str(device).startswith("cuda") else max(1, min(8, (os.cpu_count() or 2) - 1))


def report_failures(failed: Mapping[str, str]) -> int:
    """One ``FAILED <sequence>: <error>`` line on stderr per failed sequence; the exit status of
    an extraction run (1 when any sequence failed)."""
    for sid, err in failed.items():
        print(f"  FAILED {sid}: {err}", file=sys.stderr)
    return 1 if failed else 0
