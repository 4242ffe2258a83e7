"""Preprocessing contracts: how a backbone or estimator expects its crops to look.

One class, :class:`PreprocessContract`, describes every model's input (feature backbones,
AlphaPose FastPose/SIKR, FAMI-Pose/HRNet) and is written into every cache's
``source.contract``, so a cache alone says how it was made; two caches whose contracts
differ are not interchangeable. Pixel convention (one for everything): ``value_scale`` is a
**divisor** (255 -> values in [0, 1]), then ``mean`` is subtracted and, unless ``std`` is
None, the result is divided by ``std``.

Crop geometry (``box_mode``):

* ``"square"`` (TCMR/VIBE features): a square of side ``max(w, h) * bbox_scale`` around the
  box centre, warped to ``crop_size`` x ``crop_size`` exactly as :mod:`.crops` builds it.
* ``"aspect"`` (AlphaPose ``_box_to_center_scale``, HRNet ``_box2cs``): the short side of the
  box grows until w/h equals the input's w/h, then both sides are scaled by ``bbox_scale``
  (1.25); that *crop box* is warped to ``input_size`` (h, w) with the isotropic scale
  ``s = W / crop_w`` and the crop-box centre landing on (W/2, H/2).

Half-pixel convention (crop and decode share it): coordinates are pixel *indices* (integer k
= centre of pixel k, no +0.5). ``cv2.warpAffine`` fills crop pixel k from image point
``M^-1 k``; a model output cell u (stride r) is crop pixel ``u * r`` and maps back with
``x = cx + (u - W_hm / 2) * crop_w / W_hm`` (AlphaPose's / HRNet's "w" affine). Because crop
and decode use the same matrix, image -> crop -> image round trips are exact.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .crops import square_crop_affine, square_box

__all__ = ["PreprocessContract", "IMAGENET_MEAN", "IMAGENET_STD", "CONTRACTS", "BOX_MODES", "simcc_contract",
           "SIMCC_SPLIT_RATIO", "SIMCC_SIGMA"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOX_MODES = ("square", "aspect")


@dataclass(frozen=True)
class PreprocessContract:
    """Crop and normalisation rules.

    Attributes:
        crop_size: side of the square crop in pixels (224 for ResNet-50/HMR); ignored when
            ``input_size`` is given.
        bbox_scale: box enlargement (TCMR's "crop scale"; 1.25 for AlphaPose / HRNet).
        mean, std: per-channel normalisation applied after dividing by ``value_scale``, in
            ``channel_order`` order; ``std=None`` means no division (AlphaPose).
        channel_order: 'RGB' or 'BGR' (the model's input channel order; frames decode as BGR).
        value_scale: pixel values are divided by this first (255 -> values in [0, 1]).
        supporting_frames: offsets of extra frames an estimator reads around the key frame
            (e.g. (-2, -1, 1, 2)); empty for single-frame models.
        interpolation, border: how crops are resampled; recorded for provenance, the crop code
            implements exactly 'bilinear' with a 'constant-black' border.
        input_size: (h, w) of a non-square model input (256x192 FastPose, 384x288 FAMI).
        box_mode: 'square' or 'aspect' (see the module docstring).
        heatmap_stride: model output stride for keypoint estimators (4), 0 for feature backbones.
        joint_set: keypoint layout of an estimator's output, '' for feature backbones.
        decode: one-line description of the keypoint decode (provenance only).
    """

    crop_size: int = 224
    bbox_scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    channel_order: str = "RGB"
    value_scale: float = 255.0
    supporting_frames: tuple[int, ...] = field(default_factory=tuple)
    interpolation: str = "bilinear"
    border: str = "constant-black"
    input_size: tuple[int, int] | None = None
    box_mode: str = "square"
    heatmap_stride: int = 0
    joint_set: str = ""
    decode: str = ""

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if int(self.crop_size) <= 0 or not self.bbox_scale > 0 or not self.value_scale > 0:
            raise ValueError(f"crop_size, bbox_scale and value_scale must be positive: {self}")
        if len(self.mean) != 3 or (self.std is not None and (len(self.std) != 3 or min(self.std) <= 0)):
            raise ValueError(f"mean/std need 3 entries and std > 0: mean={self.mean}, std={self.std}")
        if self.interpolation != "bilinear" or self.border != "constant-black":
            raise ValueError("only interpolation='bilinear' with border='constant-black' is implemented")
        if self.box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, got {self.box_mode!r}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) <= 0):
            raise ValueError(f"input_size must be (h, w) > 0, got {self.input_size}")
        # Normalise container types so equality and JSON round trips are exact.
        s = object.__setattr__
        s(self, "crop_size", int(self.crop_size))
        s(self, "bbox_scale", float(self.bbox_scale))
        s(self, "mean", tuple(float(x) for x in self.mean))
        s(self, "std", None if self.std is None else tuple(float(x) for x in self.std))
        s(self, "value_scale", float(self.value_scale))
        s(self, "supporting_frames", tuple(int(x) for x in self.supporting_frames))
        s(self, "input_size", None if self.input_size is None else tuple(int(x) for x in self.input_size))
        s(self, "heatmap_stride", int(self.heatmap_stride))

    # -- geometry ------------------------------------------------------------------------
    @property
    def crop_hw(self) -> tuple[int, int]:
        """(h, w) of the model input."""
        return self.input_size if self.input_size is not None else (self.crop_size, self.crop_size)

    @property
    def aspect_ratio(self) -> float:
        """w / h of the model input (0.75 for 256x192)."""
        h, w = self.crop_hw
        return w / h

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(h, w) of the output map of a keypoint estimator."""
        if not self.heatmap_stride:
            raise ValueError("this contract has no heatmap_stride (not a keypoint estimator)")
        h, w = self.crop_hw
        return h // self.heatmap_stride, w // self.heatmap_stride

    def crop_box(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) detector xyxy -> (N, 4) float32 crop-box xyxy (the region the crop shows)."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cx, cy = b[:, 0] + w * 0.5, b[:, 1] + h * 0.5
        if self.box_mode == "square":
            sw = sh = np.maximum(w, h) * np.float32(self.bbox_scale)
        else:
            a = np.float32(self.aspect_ratio)
            # Widen or heighten whichever side is short of the target aspect (AlphaPose/HRNet).
            new_w = np.where(w < a * h, h * a, w)
            new_h = np.where(w > a * h, w / a, h)
            dummy = cx == -1  # AlphaPose skips the enlargement for its (-1, -1, 0, 0) dummy box
            f = np.where(dummy, np.float32(1.0), np.float32(self.bbox_scale))
            sw, sh = new_w * f, new_h * f
        x0, y0 = cx - sw * 0.5, cy - sh * 0.5
        return np.stack([x0, y0, x0 + sw, y0 + sh], axis=1).astype(np.float32)

    def crop_affine(self, box_xyxy: np.ndarray) -> np.ndarray:
        """2x3 float64 matrix image px -> crop px for one detector box (4,)."""
        if self.box_mode == "square":
            return square_crop_affine(box_xyxy, scale=self.bbox_scale, out_size=self.crop_size)
        square_box(box_xyxy)  # validates: finite, positive size (raises CropError)
        cb = self.crop_box(box_xyxy)[0].astype(np.float64)
        h, w = self.crop_hw
        s = w / (cb[2] - cb[0])
        cx, cy = (cb[0] + cb[2]) / 2.0, (cb[1] + cb[3]) / 2.0
        return np.array([[s, 0.0, w / 2.0 - s * cx], [0.0, s, h / 2.0 - s * cy]])

    def overlaps_image(self, box_xyxy: np.ndarray, image_size: tuple[int, int]) -> bool:
        """Whether the crop region of the box overlaps the (width, height) image at all."""
        cb = self.crop_box(box_xyxy)[0]
        w, h = image_size
        return bool(cb[2] > 0 and cb[3] > 0 and cb[0] < w and cb[1] < h)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict stored as the cache's ``source.contract``."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = None if self.std is None else list(self.std)
        d["supporting_frames"] = list(self.supporting_frames)
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        return d

    def to_attrs(self) -> dict[str, str]:
        """Flat ``contract.<field>`` string attributes (JSON-encoded values)."""
        return {f"contract.{k}": json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessContract":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing contract field(s) {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # -- pixels --------------------------------------------------------------------------
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        std = None if self.std is None else torch.tensor(self.std, dtype=like.dtype,
                                                         device=like.device).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, crops: torch.Tensor | np.ndarray, rgb_input: bool = True) -> Any:
        """uint8 crops (B, H, W, 3) tensor -> float32 model input (B, 3, H, W) tensor.

        ``rgb_input`` says which order the crops are in (the extraction workers hand over RGB).
        The result is channels_last in memory (a permuted NHWC tensor), which is what the
        models want anyway; numerically ``(x / value_scale - mean) / std``, the order of
        torchvision's ToTensor + Normalize. A numpy array takes the numpy path
        (:meth:`normalize_numpy`), including a single (H, W, 3) image -> (3, H, W).
        """
        if isinstance(crops, np.ndarray):
            single = crops.ndim == 3
            out = self.normalize_numpy(crops[None] if single else crops, rgb_input)
            return out[0] if single else out
        x = crops
        if (self.channel_order == "RGB") != rgb_input:
            x = x.flip(-1)
        x = x.permute(0, 3, 1, 2).float().div_(self.value_scale)
        mean, std = self._stats(x)
        x = x.sub_(mean)
        return x if std is None else x.div_(std)

    def normalize_numpy(self, crops: np.ndarray, rgb_input: bool = True) -> np.ndarray:
        """Reference numpy version of ``normalize``: (B, H, W, 3) -> (B, 3, H, W) float32.

        Integer input is divided by ``value_scale``; float input is taken as already scaled.
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"normalize expects (B, H, W, 3) or (H, W, 3) crops, got shape {crops.shape}")
        x = crops if (self.channel_order == "RGB") == rgb_input else crops[..., ::-1]
        out = x.astype(np.float32)
        if np.issubdtype(crops.dtype, np.integer):
            out /= np.float32(self.value_scale)
        out -= np.asarray(self.mean, np.float32)
        if self.std is not None:
            out /= np.asarray(self.std, np.float32)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# Named presets from the reference pipelines; the crop scale differs per dataset.
CONTRACTS: dict[str, PreprocessContract] = {
    "tcmr-3dpw": PreprocessContract(bbox_scale=1.3),
    "vibe-3dpw": PreprocessContract(bbox_scale=1.2),
    "tcmr-h36m-tight": PreprocessContract(bbox_scale=1.0),
    "tcmr-h36m": PreprocessContract(bbox_scale=1.2),
    "tcmr-posetrack": PreprocessContract(bbox_scale=1.3),
    "tcmr-demo": PreprocessContract(bbox_scale=1.2),
    "vibe-demo": PreprocessContract(bbox_scale=1.1),
}


# MMPose's SimCC (COCO, 256x192) top-down contract: box to w/h = 0.75 then x1.25
# (GetBBoxCenterScale padding 1.25), RGB with ImageNet mean/std (MMPose's 0-255 values
# 123.675/116.28/103.53 and 58.395/57.12/57.375 are these x255), split ratio 2.0, 1-D Gaussian
# labels of sigma 6.0 bins (the same values as configs/pose2d/simcc_hrnet_w32_coco.yaml).
# k and sigma are not crop fields; they are recorded in ``decode`` and the loader checks k
# against the checkpoint's bins.
SIMCC_SPLIT_RATIO = 2.0
SIMCC_SIGMA = 6.0


def simcc_contract(split_ratio: float = SIMCC_SPLIT_RATIO, sigma: float = SIMCC_SIGMA,
                   **overrides: Any) -> PreprocessContract:
    """SimCC (HRNet) crop contract; keyword overrides as for the other presets."""
    decode = (f"simcc argmax / k (split ratio k={split_ratio:g}, trained with gaussian sigma={sigma:g} bins); "
              "score = min of the two softmax peaks; pixel-index convention (no +0.5); "
              "isotropic crop_w/W about crop-box centre")
    base = dict(input_size=(256, 192), box_mode="aspect", bbox_scale=1.25, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                value_scale=255.0, channel_order="RGB", heatmap_stride=4, joint_set="coco17", decode=decode)
    return PreprocessContract(**{**base, **overrides})


CONTRACTS["mmpose-simcc-coco"] = simcc_contract()
