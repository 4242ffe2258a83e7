"""Preprocessing contracts: how a backbone or estimator expects its crops to look.

A contract is written into every cache's ``source.contract`` so that a cache alone says how its
features were made; two caches whose contracts differ are not interchangeable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["PreprocessContract", "IMAGENET_MEAN", "IMAGENET_STD", "CONTRACTS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessContract:
    """Crop and normalisation rules.

    Attributes:
        crop_size: side of the square crop in pixels (224 for ResNet-50/HMR).
        bbox_scale: the square box side is ``max(w, h) * bbox_scale`` (TCMR's "crop scale").
        mean, std: per-channel normalisation applied after dividing by ``value_scale``,
            in ``channel_order`` order.
        channel_order: 'RGB' or 'BGR' (the model's input channel order; frames decode as BGR).
        value_scale: pixel values are divided by this first (255 -> values in [0, 1]).
        supporting_frames: offsets of extra frames an estimator reads around the key frame
            (e.g. (-2, -1, 1, 2)); empty for single-frame backbones.
        interpolation, border: how crops are resampled; recorded for provenance, the crop code
            implements exactly 'bilinear' with a 'constant-black' border.
    """

    crop_size: int = 224
    bbox_scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    value_scale: float = 255.0
    supporting_frames: tuple[int, ...] = field(default_factory=tuple)
    interpolation: str = "bilinear"
    border: str = "constant-black"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if int(self.crop_size) <= 0 or not self.bbox_scale > 0 or not self.value_scale > 0:
            raise ValueError(f"crop_size, bbox_scale and value_scale must be positive: {self}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std need 3 entries and std > 0: mean={self.mean}, std={self.std}")
        if self.interpolation != "bilinear" or self.border != "constant-black":
            raise ValueError("only interpolation='bilinear' with border='constant-black' is implemented")
        # Normalise container types so equality and JSON round trips are exact.
        object.__setattr__(self, "crop_size", int(self.crop_size))
        object.__setattr__(self, "bbox_scale", float(self.bbox_scale))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        object.__setattr__(self, "value_scale", float(self.value_scale))
        object.__setattr__(self, "supporting_frames", tuple(int(x) for x in self.supporting_frames))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict stored as the cache's ``source.contract``."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["supporting_frames"] = list(self.supporting_frames)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessContract":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing contract field(s) {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def normalize(self, crops: torch.Tensor, rgb_input: bool = True) -> torch.Tensor:
        """uint8 crops (B, H, W, 3) -> float32 model input (B, 3, H, W).

        ``rgb_input`` says which order the crops are in (the extraction workers hand over RGB).
        The result is channels_last in memory (a permuted NHWC tensor), which is what the
        backbones want anyway; numerically this is ``(x / value_scale - mean) / std``, the same
        order of operations as torchvision's ToTensor + Normalize.
        """
        x = crops
        if (self.channel_order == "RGB") != rgb_input:
            x = x.flip(-1)
        x = x.permute(0, 3, 1, 2).float().div_(self.value_scale)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def normalize_numpy(self, crops_rgb: np.ndarray) -> np.ndarray:
        """Reference numpy version of ``normalize`` for RGB uint8 (B, H, W, 3) -> (B, 3, H, W)."""
        x = crops_rgb if self.channel_order == "RGB" else crops_rgb[..., ::-1]
        x = x.astype(np.float32) / np.float32(self.value_scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# Named presets from the reference pipelines (tcmr.md §3.1); the crop scale differs per dataset.
CONTRACTS: dict[str, PreprocessContract] = {
    "tcmr-3dpw": PreprocessContract(bbox_scale=1.3),
    "vibe-3dpw": PreprocessContract(bbox_scale=1.2),
    "tcmr-h36m-tight": PreprocessContract(bbox_scale=1.0),
    "tcmr-h36m": PreprocessContract(bbox_scale=1.2),
    "tcmr-posetrack": PreprocessContract(bbox_scale=1.3),
    "tcmr-demo": PreprocessContract(bbox_scale=1.2),
    "vibe-demo": PreprocessContract(bbox_scale=1.1),
}
