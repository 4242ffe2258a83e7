"""Square person crops as 2x3 affine matrices, and the exact inverse mapping.

The crop matches TCMR/VIBE feature extraction: a square of side
``max(w, h) * scale`` centred on the box centre is warped with ``cv2.warpAffine`` (bilinear, black
border) to ``out_size`` x ``out_size``. The matrix is built the way the reference builds it, from
three point pairs (centre, centre + half-side down, centre + half-side right) cast to float32 and
passed to ``cv2.getAffineTransform``; for rotation-free crops that is ``x' = s * x + t`` with
``s = out_size / side``. Building it identically keeps the warp's fixed-point sampling (1/32 px)
bit-compatible with the reference features.

Invalid boxes (zero/negative size, NaN) raise ``CropError``; boxes that do not overlap the image
produce an all-black crop, which ``box_overlaps_image`` lets callers detect (the feature pipeline
marks such frames ``valid=False`` and warns rather than failing the sequence).
"""
from __future__ import annotations

import cv2
import numpy as np

from poselift.core.errors import UserError

__all__ = ["CropError", "square_box", "square_crop_affine", "invert_affine", "crop",
           "to_image_coords", "to_crop_coords", "box_overlaps_image"]


class CropError(UserError, ValueError):
    """A box cannot define a crop (zero or negative size, non-finite values)."""


def square_box(box_xyxy: np.ndarray, scale: float = 1.0) -> tuple[float, float, float]:
    """(cx, cy, side) of the square crop for an xyxy box: side = max(w, h) * scale."""
    b = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.isfinite(b).all():
        raise CropError(f"box must be 4 finite numbers [x1, y1, x2, y2], got {b.tolist()}")
    w, h = b[2] - b[0], b[3] - b[1]
    side = max(w, h) * float(scale)
    if not (w > 0 and h > 0 and side > 0):
        raise CropError(f"box {b.tolist()} has zero or negative size (w={w:g}, h={h:g})")
    return (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0, float(side)


def square_crop_affine(box_xyxy: np.ndarray | None = None, *, center: tuple[float, float] | None = None,
                       size: float | None = None, scale: float = 1.0, out_size: int = 224) -> np.ndarray:
    """2x3 float64 matrix mapping image pixels to crop pixels.

    Give either ``box_xyxy`` (side = max(w, h) * scale) or ``center`` and ``size`` (side =
    size * scale; ``size`` is the unscaled square side, e.g. TCMR's stored bbox w = h).
    """
    if box_xyxy is not None:
        if center is not None or size is not None:
            raise ValueError("give either box_xyxy or center/size, not both")
        cx, cy, side = square_box(box_xyxy, scale)
    else:
        if center is None or size is None:
            raise ValueError("square_crop_affine needs box_xyxy or both center and size")
        cx, cy = float(center[0]), float(center[1])
        side = float(size) * float(scale)
        if not (np.isfinite([cx, cy, side]).all() and side > 0):
            raise CropError(f"crop centre {center} / size {size} x scale {scale} is not a positive "
                            f"finite square")
    half, o = side * 0.5, out_size * 0.5
    src = np.float32([[cx, cy], [cx, cy + half], [cx + half, cy]])
    dst = np.float32([[o, o], [o, o + o], [o + o, o]])
    return cv2.getAffineTransform(src, dst).astype(np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (float64)."""
    m = np.asarray(m, dtype=np.float64)
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def crop(frame: np.ndarray, m: np.ndarray, out_size: int = 224) -> np.ndarray:
    """Warp ``frame`` (H, W, C) uint8 with ``m`` to (out_size, out_size, C); black outside."""
    return cv2.warpAffine(frame, np.asarray(m, dtype=np.float64), (int(out_size), int(out_size)),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _apply(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float64)
    if p.shape[-1] != 2:
        raise ValueError(f"points must have a trailing dimension of 2 (x, y), got shape {p.shape}")
    return p @ m[:, :2].T + m[:, 2]


def to_image_coords(pts_crop: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map crop pixel coordinates (..., 2) back to image pixels with the inverse of ``m``."""
    return _apply(pts_crop, invert_affine(m))


def to_crop_coords(pts_image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map image pixel coordinates (..., 2) into the crop."""
    return _apply(pts_image, np.asarray(m, dtype=np.float64))


def box_overlaps_image(box_xyxy: np.ndarray, image_size: tuple[int, int], scale: float = 1.0) -> bool:
    """Whether the scaled square crop of the box overlaps the (width, height) image at all."""
    cx, cy, side = square_box(box_xyxy, scale)
    w, h = image_size
    half = side / 2.0
    return cx + half > 0 and cy + half > 0 and cx - half < w and cy - half < h
