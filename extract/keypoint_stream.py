"""DataLoader workers for keypoint extraction: decode + crop, in frame order, bounded memory.

Two IterableDatasets, both dealing whole videos to workers (longest first, as ``CropStream``)
and yielding chunks of uint8 **BGR** crops (the model runner flips channels in torch, which is
cheaper than a cv2 pass per crop in the worker):

* :class:`DetectionCropStream` (single-frame estimators, SIKR): every box of every frame;
  chunks end on frame boundaries so that pose NMS sees whole frames.
* :class:`TubeCropStream` (FAMI-Pose): one person tube; each key frame needs the frames at
  ``supporting_indices`` cropped with the key frame's box. Key frames are grouped in windows
  of ``tube_length`` that share one crop box (the enclosing box of the window's boxes), so each
  frame of a window is cropped once and its backbone feature serves every key frame that reads
  it. ``tube_length=1`` is the reference behaviour (the key frame's own
  box, five crops per key frame, duplicates at the borders cropped once).

A failing video yields ``{job, error, last=True}`` and the stream goes on with the next one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .contracts import PreprocessContract
from .crops import CropError
from .detections import VideoDetections
from .estimators.famipose import supporting_indices
from .sharding import balance_by_frames
from .video import open_source

__all__ = ["TubeSpec", "DetectionCropStream", "TubeCropStream", "warp_into"]


@dataclass
class TubeSpec:
    """One person tube: ``boxes`` (T, 4) xyxy with NaN rows, ``frame_index`` (T,) source frames."""

    seq_id: str
    source: str | os.PathLike
    frame_index: np.ndarray
    boxes: np.ndarray
    track_id: int = 0
    attrs: dict[str, Any] | None = None


def warp_into(dst: np.ndarray, frame: np.ndarray, m: np.ndarray) -> None:
    """Bilinear, black-border crop of ``frame`` with the 2x3 ``m`` written into ``dst`` (h, w, 3)."""
    h, w = dst.shape[:2]
    cv2.warpAffine(frame, m, (w, h), dst=dst, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _meta(src: Any, source: str | os.PathLike) -> dict[str, Any]:
    return {"fps": float(src.fps), "image_size": [int(v) for v in src.size],
            "source_frames": int(src.num_frames), "source": Path(source).name}


class _Stream(IterableDataset):
    def _lengths(self) -> list[int]:
        raise NotImplementedError

    def _job(self, i: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        mine = (list(range(len(self._lengths()))) if info is None
                else balance_by_frames(self._lengths(), info.num_workers)[info.id])
        for i in mine:
            try:
                yield from self._job(i)
            except Exception as e:  # reported per video; the other videos keep going
                yield {"job": i, "error": f"{type(e).__name__}: {e}", "last": True}


class DetectionCropStream(_Stream):
    """Chunks ``{job, rows (n,) box rows, crops uint8 BGR (n, h, w, 3), ok (n,), upto, last,
    meta}``: all boxes of the frames at positions <= ``upto`` not yet sent; ``ok`` is False
    for boxes whose crop would lie entirely outside the image."""

    def __init__(self, jobs: Sequence[VideoDetections], contract: PreprocessContract, chunk: int = 32) -> None:
        self.jobs, self.contract, self.chunk = list(jobs), contract, int(chunk)

    def _lengths(self) -> list[int]:
        return [len(j.frame_index) for j in self.jobs]

    def _job(self, i: int) -> Iterator[dict[str, Any]]:
        job, c = self.jobs[i], self.contract
        src = open_source(job.source)
        meta = _meta(src, job.source)
        h, w = c.crop_hw
        last_pos = len(job.frame_index) - 1
        need = np.unique(job.det_pos)
        rows: list[int] = []
        crops: list[np.ndarray] = []
        ok: list[bool] = []

        def emit(upto: int, last: bool) -> dict[str, Any]:
            arr = np.stack(crops) if crops else np.zeros((0, h, w, 3), np.uint8)
            return {"job": i, "rows": np.asarray(rows, np.int64), "crops": arr,
                    "ok": np.asarray(ok, bool), "upto": upto, "last": last, "meta": meta}

        for pos, (_, frame) in zip(need, src.frames(job.frame_index[need])):
            size = (frame.shape[1], frame.shape[0])
            sl = job.rows_of(int(pos))
            for r in range(sl.start, sl.stop):
                buf = np.zeros((h, w, 3), np.uint8)
                try:
                    good = c.overlaps_image(job.boxes[r], size)
                    if good:
                        warp_into(buf, frame, c.crop_affine(job.boxes[r]))
                except CropError:
                    good = False
                rows.append(r)
                crops.append(buf)
                ok.append(good)
            if len(rows) >= self.chunk:
                yield emit(int(pos), False)
                rows, crops, ok = [], [], []
        yield emit(last_pos, True)


class TubeCropStream(_Stream):
    """Chunks ``{job, keys (n,) key positions, crops uint8 BGR (m, h, w, 3), key_rows (n, 1+S)
    rows of ``crops`` for [key, supporting...], crop_boxes (n, 4), ok (n,), upto, last, meta}``.

    ``ok`` is False for key frames without a box or whose crop lies outside the image (their
    ``key_rows`` are 0 and must be ignored). At most ``tube_length + 4`` decoded frames and one
    chunk of crops are alive at a time.
    """

    def __init__(self, tubes: Sequence[TubeSpec], contract: PreprocessContract, chunk: int = 16,
                 tube_length: int = 8) -> None:
        if tube_length < 1:
            raise ValueError(f"tube_length must be >= 1, got {tube_length}")
        self.tubes, self.contract = list(tubes), contract
        self.chunk, self.tube_length = int(chunk), int(tube_length)
        self.offsets = contract.supporting_frames or (-2, -1, 1, 2)

    def _lengths(self) -> list[int]:
        return [len(t.boxes) for t in self.tubes]

    def _job(self, i: int) -> Iterator[dict[str, Any]]:
        tube, c = self.tubes[i], self.contract
        boxes = np.asarray(tube.boxes, np.float32)
        n_pos = len(boxes)
        has = np.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        src = open_source(tube.source)
        meta = _meta(src, tube.source)
        frames_it = iter(src.frames(np.asarray(tube.frame_index, np.int64)))
        held: dict[int, np.ndarray] = {}
        next_pos = 0
        h, w = c.crop_hw
        reach = max(max(self.offsets), 1)  # supporting_indices may read key + 1 at the end

        def frame_at(p: int) -> np.ndarray:
            nonlocal next_pos
            while next_pos <= p:
                held[next_pos] = next(frames_it)[1]
                next_pos += 1
            return held[p]

        acc: dict[str, list] = {"keys": [], "crops": [], "key_rows": [], "crop_boxes": [], "ok": []}
        n_crops = 0
        for a in range(0, n_pos, self.tube_length):
            b = min(a + self.tube_length, n_pos)
            for p in [p for p in held if p < a + min(self.offsets)]:
                del held[p]  # bounded: only the window and its supporting reach stay decoded
            keys = np.arange(a, b)
            valid = keys[has[a:b]]
            wbox = None
            if valid.size:
                sel = boxes[valid]
                wbox = np.array([sel[:, 0].min(), sel[:, 1].min(), sel[:, 2].max(), sel[:, 3].max()])
                frame0 = frame_at(min(int(valid[0]), n_pos - 1))
                if not c.overlaps_image(wbox, (frame0.shape[1], frame0.shape[0])):
                    wbox = None
            rows_of: dict[int, int] = {}
            if wbox is not None:
                m = c.crop_affine(wbox)
                cbox = c.crop_box(wbox)[0]
                for k in valid:
                    for p in [int(k)] + supporting_indices(int(k), n_pos, self.offsets):
                        if p not in rows_of:
                            buf = np.empty((h, w, 3), np.uint8)
                            warp_into(buf, frame_at(p), m)
                            rows_of[p] = n_crops
                            acc["crops"].append(buf)
                            n_crops += 1
            else:
                frame_at(min(b - 1 + reach, n_pos - 1))  # keep decoding in step
            for k in keys:
                good = wbox is not None and bool(has[k])
                acc["keys"].append(int(k))
                acc["ok"].append(good)
                acc["crop_boxes"].append(cbox if good else np.full(4, np.nan, np.float32))
                acc["key_rows"].append([rows_of[int(k)]] + [rows_of[p] for p in
                                       supporting_indices(int(k), n_pos, self.offsets)]
                                       if good else [0] * (1 + len(self.offsets)))
            if len(acc["keys"]) >= self.chunk or b == n_pos:
                yield {"job": i, "keys": np.asarray(acc["keys"], np.int64),
                       "crops": (np.stack(acc["crops"]) if acc["crops"] else np.zeros((0, h, w, 3), np.uint8)),
                       "key_rows": np.asarray(acc["key_rows"], np.int64).reshape(-1, 1 + len(self.offsets)),
                       "crop_boxes": np.asarray(acc["crop_boxes"], np.float32).reshape(-1, 4),
                       "ok": np.asarray(acc["ok"], bool), "upto": b - 1, "last": b == n_pos, "meta": meta}
                acc = {k: [] for k in acc}
                n_crops = 0
