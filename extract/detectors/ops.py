"""YOLOX pre/post-processing without torchvision: letterbox, decode, NMS, postprocess.

Semantics follow YOLOX (Megvii-BaseDetection/YOLOX, ``ValTransform(legacy=False)``,
``YOLOXHead.decode_outputs``, ``utils.boxes.postprocess``) and torchvision's ``nms`` /
``batched_nms`` (greedy, IoU strictly above the threshold suppresses, kept indices by
descending score; class-aware via per-class coordinate offsets below a size switch, a per-class
loop above it). See ``../shared/formats/inference.md`` §5.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["decode_outputs", "yolox_preprocess", "nms", "batched_nms", "yolox_postprocess",
           "PAD_VALUE"]

PAD_VALUE = 114  # letterbox fill of the reference's canvas


def decode_outputs(raw: torch.Tensor, sizes: Sequence[tuple[int, int]],
                   strides: Sequence[int]) -> torch.Tensor:
    """(N, A, 5 + C) raw head rows ``[tx, ty, tw, th, obj, cls...]`` -> decoded rows.

    Anchors run level by level (``sizes[i]`` = (h, w) at ``strides[i]``), row-major within a
    level; cx = (tx + col) * s, cy = (ty + row) * s (no half-cell offset), w = exp(tw) * s,
    h = exp(th) * s. obj/cls already hold probabilities and pass through.
    """
    grids, scale = [], []
    for (h, w), s in zip(sizes, strides):
        yv, xv = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grids.append(torch.stack((xv, yv), 2).reshape(-1, 2))
        scale.append(torch.full((h * w, 1), float(s)))
    grid = torch.cat(grids).to(raw.device, raw.dtype)
    stride = torch.cat(scale).to(raw.device, raw.dtype)
    if grid.shape[0] != raw.shape[1]:
        raise ValueError(f"decode: {raw.shape[1]} anchors but the levels {list(sizes)} give {grid.shape[0]}")
    return torch.cat([(raw[..., 0:2] + grid) * stride, torch.exp(raw[..., 2:4]) * stride,
                      raw[..., 4:]], dim=-1)


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    return h, w


def yolox_preprocess(frame_bgr: np.ndarray, size: int | Sequence[int]) -> tuple[torch.Tensor, float]:
    """Letterbox one uint8 BGR (H, W, 3) frame into (3, S, S) float32 as YOLOX evaluates it.

    r = min(S/H, S/W) (float64); bilinear ``cv2.resize`` to (int(W r), int(H r)); pasted at the
    top-left of an S x S canvas of 114; channels stay BGR; values stay 0..255 (no /255, mean or
    std: the non-legacy weights expect raw pixels). Returns the tensor and r; frame coordinates
    = model coordinates / r. ``size`` may be an int or (S_h, S_w).
    """
    img = np.asarray(frame_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"yolox_preprocess: expected an (H, W, 3) BGR frame, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"yolox_preprocess: expected uint8 pixels, got {img.dtype}")
    import cv2  # here, not at module level: ``import poselift.extract`` stays light

    sh, sw = _size_hw(size)
    h, w = img.shape[:2]
    r = min(sh / h, sw / w)
    nw, nh = int(w * r), int(h * r)
    canvas = np.full((sh, sw, 3), PAD_VALUE, np.uint8)
    canvas[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32)), r


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's rules: (K, 4) xyxy, (K,) scores -> kept indices (int64).

    Boxes are visited by descending score (ties keep input order); a later box is suppressed
    when its IoU with a kept box is strictly greater than ``iou_threshold``. IoU is computed in
    the boxes' dtype with the same operation order as torchvision's kernel (areas without +1)
    and compared against the threshold in double precision, so borderline cases agree bitwise.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: expected (K, 4) boxes and (K,) scores, got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    b = boxes.detach().cpu().numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices.numpy()
    suppressed = np.zeros(len(b), bool)
    keep = []
    zero = b.dtype.type(0)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou.astype(np.float64) > float(iou_threshold)]] = True
    return torch.as_tensor(np.asarray(keep, np.int64), device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS (boxes of different ``idxs`` never suppress each other), torchvision's way.

    Up to 4000 box coordinates on CPU (20000 on CUDA) every class is shifted by
    class * (max coordinate + 1) and one NMS runs; above that each class runs separately and
    the kept indices are re-sorted by score. The shift changes rounding, so the two can differ
    in rare borderline cases; the same switch keeps results identical to the reference.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 20000):
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for c in torch.unique(idxs):
            cur = torch.where(idxs == c)[0]
            keep_mask[cur[nms(boxes[cur], scores[cur], iou_threshold)]] = True
        kept = torch.where(keep_mask)[0]
        return kept[scores[kept].sort(descending=True, stable=True).indices]
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def yolox_postprocess(outputs: torch.Tensor, conf_thre: float = 0.7, nms_thre: float = 0.45,
                      class_agnostic: bool = False, num_classes: int | None = None
                      ) -> list[torch.Tensor | None]:
    """Decoded (N, A, 5 + C) -> per image a (K, 7) tensor or None (no candidate).

    Rows ``[x1, y1, x2, y2, obj, class_conf, class_pred]`` in model-input pixels, kept by
    obj * class_conf >= ``conf_thre`` (compared in the outputs' dtype), then NMS on that score
    (class-aware unless ``class_agnostic``), in descending score order. Unlike the reference,
    ``outputs`` is not overwritten. Divide coordinates by the letterbox ratio for frame pixels.
    """
    if outputs.ndim != 3 or outputs.shape[-1] < 6:
        raise ValueError(f"yolox_postprocess: expected (N, A, 5 + C) outputs, got {tuple(outputs.shape)}")
    c = outputs.shape[-1] - 5 if num_classes is None else int(num_classes)
    pred = outputs.clone()
    pred[..., 0] = outputs[..., 0] - outputs[..., 2] / 2
    pred[..., 1] = outputs[..., 1] - outputs[..., 3] / 2
    pred[..., 2] = outputs[..., 0] + outputs[..., 2] / 2
    pred[..., 3] = outputs[..., 1] + outputs[..., 3] / 2
    result: list[torch.Tensor | None] = [None] * len(pred)
    for i, p in enumerate(pred):
        if p.shape[0] == 0:
            continue
        class_conf, class_pred = torch.max(p[:, 5:5 + c], 1, keepdim=True)
        mask = p[:, 4] * class_conf.squeeze(1) >= conf_thre
        det = torch.cat((p[:, :5], class_conf, class_pred.to(p.dtype)), 1)[mask]
        if det.shape[0] == 0:
            continue
        score = det[:, 4] * det[:, 5]
        keep = (nms(det[:, :4], score, nms_thre) if class_agnostic
                else batched_nms(det[:, :4], score, det[:, 6], nms_thre))
        result[i] = det[keep]
    return result
