"""Person boxes for a stream of frames with a YOLOX model: batching, device choice, AMP on CUDA."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from poselift.core.precision import inference_precision

from .ops import yolox_postprocess, yolox_preprocess
from .yolox import YOLOX

__all__ = ["FrameBoxes", "detect_people", "pick_device", "PERSON_CLASS"]

PERSON_CLASS = 0  # COCO class index of "person" in YOLOX's 80-class output


@dataclass
class FrameBoxes:
    """Person detections of one frame: boxes (K, 4) float32 xyxy in frame pixels (not clipped,
    as the reference), scores (K,) float32 = obj * class_conf, in descending score order."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def pick_device(device: str | torch.device | None) -> torch.device:
    """:func:`poselift.core.device.resolve_device`'s rules, except that a CUDA request on a
    machine without CUDA falls back to the CPU (a library call should still detect people)."""
    from poselift.core.device import resolve_device

    try:
        return resolve_device("auto" if device is None else device)
    except RuntimeError:  # CUDA asked for but not available
        return torch.device("cpu")


def _batches(frames: Iterable[np.ndarray], n: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def detect_people(frames: Iterable[np.ndarray], model: YOLOX, *, size: int | None = None,
                  conf_thre: float = 0.25, nms_thre: float = 0.45, class_agnostic: bool = False,
                  batch_size: int = 8, device: str | torch.device | None = None,
                  amp: bool = True, min_score: float = 0.0,
                  precision: str | None = None) -> list[FrameBoxes]:
    """Run YOLOX on uint8 BGR (H, W, 3) frames and keep the person boxes of each frame.

    Args:
        frames: any iterable of BGR frames (sizes may differ between frames); consumed lazily,
            ``batch_size`` at a time.
        model: a YOLOX (e.g. from ``load_yolox``); moved to the chosen device, left in eval mode.
        size: letterbox size S (default: ``model.test_size``, 416 nano/tiny, 640 otherwise).
        conf_thre, nms_thre, class_agnostic: as ``yolox_postprocess`` (the defaults are the
            official demo's 0.25 / 0.45; class-aware so that a person is not suppressed by an
            overlapping box of another class, e.g. a bicycle under its rider).
        device: None/"auto" picks CUDA when available; CUDA requested without CUDA runs on CPU.
        amp: float16 autocast on CUDA (ignored on CPU); postprocessing runs in float32.
        precision: fp32 | bf16 | fp16 | auto (``poselift.core.precision``), replaces ``amp``
            when given (bf16 autocast runs on AVX512-BF16/AMX CPUs).
        min_score: extra filter on the person score after NMS.

    Returns:
        one :class:`FrameBoxes` per input frame, boxes divided by the letterbox ratio.
    """
    if batch_size < 1:
        raise ValueError(f"detect_people: batch_size must be >= 1, got {batch_size}")
    dev = pick_device(device)
    model = model.to(dev).eval()
    s = int(size or getattr(model, "test_size", 640))
    if s % 32:
        raise ValueError(f"detect_people: size must be a multiple of 32, got {s}")
    prec = inference_precision(precision, dev, amp=amp)
    out: list[FrameBoxes] = []
    for batch in _batches(frames, batch_size):
        prepared = []
        for i, f in enumerate(batch):
            try:
                prepared.append(yolox_preprocess(f, s))
            except ValueError as e:
                raise ValueError(f"detect_people: frame {len(out) + i}: {e}") from None
        tensors, ratios = zip(*prepared)
        x = torch.stack(tensors).to(dev, non_blocking=True)
        with prec.autocast():
            raw = model(x)
        dets = yolox_postprocess(raw.float(), conf_thre, nms_thre, class_agnostic)
        for det, r in zip(dets, ratios):
            if det is None:
                out.append(FrameBoxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
                continue
            det = det[det[:, 6] == PERSON_CLASS].cpu()
            score = (det[:, 4] * det[:, 5]).numpy().astype(np.float32)
            boxes = (det[:, :4] / r).numpy().astype(np.float32)
            keep = score >= min_score
            out.append(FrameBoxes(boxes[keep], score[keep]))
    return out
