"""Preprocessing contract of AlphaPose FastPose (SIKR) crops, written into cache attributes.

Crop: detector box xyxy -> centre and (w, h) corrected to aspect w/h = 0.75, times 1.25
(``_box_to_center_scale``), warped to 256x192 (h x w). Pixels: RGB / 255 minus
(0.406, 0.457, 0.480) per channel, **no std division**. The decode box is the crop box
(:meth:`FastPoseContract.crop_box`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FastPoseContract", "FASTPOSE_CONTRACT"]


@dataclass(frozen=True)
class FastPoseContract:
    """What a FastPose crop must look like; ``to_attrs()`` goes into the cache."""

    input_size: tuple[int, int] = (256, 192)       # (h, w)
    heatmap_size: tuple[int, int] = (64, 48)       # (h, w), stride 4
    channel_order: str = "RGB"
    value_scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.406, 0.457, 0.480)
    std: tuple[float, float, float] | None = None  # AlphaPose subtracts the mean only
    bbox_scale: float = 1.25
    aspect_ratio: float = 0.75                      # w / h
    norm_type: str = "sigmoid"
    decode: str = "sikr_integral; cell-centre indices (no +0.5); isotropic box_w/W about box centre"

    def crop_box(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) detector xyxy -> (N, 4) float32 crop xyxy (aspect-corrected, scaled 1.25x)."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        w = b[:, 2] - b[:, 0]
        h = b[:, 3] - b[:, 1]
        cx = b[:, 0] + w * 0.5
        cy = b[:, 1] + h * 0.5
        a = self.aspect_ratio
        # Widen or heighten whichever side is short of the target aspect, as upstream.
        new_w = np.where(w < a * h, h * a, w)
        new_h = np.where(w > a * h, w / a, h)
        sw = new_w * self.bbox_scale
        sh = new_h * self.bbox_scale
        # Upstream skips the 1.25 factor for the (-1, -1, 0, 0) dummy box (centre x == -1).
        dummy = cx == -1
        sw = np.where(dummy, new_w, sw)
        sh = np.where(dummy, new_h, sh)
        x0 = cx - sw * 0.5
        y0 = cy - sh * 0.5
        return np.stack([x0, y0, x0 + sw, y0 + sh], axis=1).astype(np.float32)

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) RGB crop (uint8 0..255 or float) -> (3, h, w) float32 network input.

        Integer input is always divided by 255; float input is taken as already scaled.
        Upstream divides only when the crop's max is > 1, so an all-0/1 (near-black) uint8
        crop stays unscaled there: a known quirk we do not reproduce.
        """
        x = np.asarray(rgb)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"normalize expects an (h, w, 3) RGB crop, got shape {x.shape}")
        out = x.astype(np.float32)
        if np.issubdtype(x.dtype, np.integer):
            out *= self.value_scale
        out -= np.asarray(self.mean, dtype=np.float32)
        if self.std is not None:
            out /= np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def to_attrs(self) -> dict[str, str]:
        """Flat string attributes for an HDF5 cache (JSON-encoded values)."""
        return {f"contract.{k}": json.dumps(v) for k, v in asdict(self).items()}


FASTPOSE_CONTRACT = FastPoseContract()
