"""Batched 2D-estimator inference on uint8 crops: normalise on the device, run, decode.

Both runners take crops as they come from the workers (uint8 BGR (N, h, w, 3), pinned on
CUDA), copy them to the device non-blocking, normalise there with the contract (channels_last
falls out of the NHWC layout), run the model (autocast as ``precision`` says: by default fp16 on CUDA, float32 on the CPU;
``precision="bf16"`` runs CPU autocast on AVX512-BF16/AMX) and decode to image
pixels through the crop boxes with one convention (pixel-index coordinates, no +0.5; see
``poselift.extract.contracts``):

* :class:`SikrRunner`: FastPose logits -> ``sikr_decode`` (optional flip test on raw logits).
* :class:`SimccRunner`: HRNet + SimCC logits -> argmax / k in crop px -> image px (optional
  flip test on raw logits, :func:`~.estimators.simcc_model.simcc_flip_test`).
* :class:`FamiRunner`: frozen HRNet features once per crop, the FAMI head per key frame,
  :func:`fami_decode` on the final heatmaps.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from poselift.core.precision import Precision, inference_precision

from .contracts import PreprocessContract
from .estimators.famipose import FAMIPose
from .estimators.sikr import crop_to_image, flip_pairs_for, flip_test_logits, sikr_decode
from .estimators.simcc import simcc_decode
from .estimators.simcc_model import simcc_flip_test

__all__ = ["fami_decode", "SikrRunner", "SimccRunner", "FamiRunner"]


def fami_decode(heatmaps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """HRNet ``get_final_preds`` without the affine: (N, K, h, w) -> cells (N, K, 2), peaks (N, K).

    Argmax (first maximum), then +-0.25 cell toward the higher neighbour in x and in y, applied
    only when ``1 < px < w - 1 and 1 < py < h - 1`` (the reference's strict bounds). Joints
    whose peak is <= 0 get cell (0, 0), as the reference's ``pred_mask`` does; their score
    (the peak) tells them apart.
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.detach().float().reshape(n, k, h * w)
    peak, idx = flat.max(dim=2)
    px, py = idx % w, torch.div(idx, w, rounding_mode="floor")
    coords = torch.stack([px, py], dim=2).float()
    inner = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    pxc, pyc = px.clamp(1, w - 2), py.clamp(1, h - 2)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (yy * w + xx)[..., None]).squeeze(2)

    dx = at(py, pxc + 1) - at(py, pxc - 1)
    dy = at(pyc + 1, px) - at(pyc - 1, px)
    step = torch.stack([torch.sign(dx), torch.sign(dy)], dim=2) * 0.25
    coords = coords + torch.where(inner[..., None], step, torch.zeros_like(step))
    coords = coords * (peak > 0)[..., None].float()
    return coords.cpu().numpy().astype(np.float32), peak.cpu().numpy().astype(np.float32)


@contextmanager
def _flush_denormal(on: bool) -> Iterator[None]:
    # Subnormal floats (common in untrained / random-init nets) slow CPU convs 20-40x.
    if on:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(False)


class _Runner:
    def __init__(self, model: nn.Module, contract: PreprocessContract, device: str | torch.device, amp: bool,
                 precision: str | None = None) -> None:
        self.device = torch.device(device)
        self.contract = contract
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.precision: Precision = inference_precision(precision, self.device, amp=amp)
        self.amp = self.precision.dtype is not None
        self.flush = self.device.type == "cpu"

    def prepare(self, crops: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 BGR (N, h, w, 3) -> normalised (N, 3, h, w) channels_last on the device."""
        x = torch.as_tensor(crops).to(self.device, non_blocking=True)
        return self.contract.normalize(x, rgb_input=False).contiguous(memory_format=torch.channels_last)

    def _autocast(self):  # noqa: ANN202
        return self.precision.autocast()


class SikrRunner(_Runner):
    """FastPose + SIKR decode. ``flip_test`` averages raw logits with the flipped-back mirror."""

    def __init__(self, model: nn.Module, contract: PreprocessContract, device: str | torch.device = "cpu",
                 *, amp: bool = True, flip_test: bool = False,
                 flip_pairs: Sequence[tuple[int, int]] | None = None, precision: str | None = None) -> None:
        super().__init__(model, contract, device, amp, precision)
        self.flip_test = flip_test
        k = int(getattr(model, "num_joints", 0))
        self.flip_pairs = flip_pairs if flip_pairs is not None else (flip_pairs_for(k) if flip_test else ())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised crops (N, 3, h, w) -> raw logits (N, K, h/4, w/4) float32."""
        with _flush_denormal(self.flush), torch.inference_mode():
            if self.flip_test:
                return flip_test_logits(self.model, x, self.flip_pairs, autocast=self._autocast)
            with self._autocast():
                return self.model(x).float()

    def __call__(self, crops: torch.Tensor | np.ndarray, crop_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 BGR crops (N, h, w, 3), crop boxes (N, 4) -> image px (N, K, 2), scores (N, K)."""
        if len(crop_boxes) == 0:
            k = int(getattr(self.model, "num_joints", 0))
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        coords, conf = sikr_decode(self.logits(self.prepare(crops)), np.asarray(crop_boxes, np.float32))
        return coords, conf[..., 0]


class SimccRunner(SikrRunner):
    """HRNet + SimCC: argmax / k in crop pixels, then the crop box back to image pixels.
    ``flip_test`` averages the raw x / y logits with the mirror's (x bins reversed, pairs swapped)."""

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Normalised crops (N, 3, H, W) -> (x (N, K, W*k), y (N, K, H*k)) float32."""
        with _flush_denormal(self.flush), torch.inference_mode():
            if self.flip_test:
                return simcc_flip_test(self.model, x, self.flip_pairs, autocast=self._autocast)
            with self._autocast():
                lx, ly = self.model(x)
            return lx.float(), ly.float()

    def __call__(self, crops: torch.Tensor | np.ndarray, crop_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 BGR crops (N, H, W, 3), crop boxes (N, 4) -> image px (N, K, 2), scores (N, K)."""
        k = int(self.model.num_joints)
        if len(crop_boxes) == 0:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        lx, ly = self.logits(self.prepare(crops))
        xy, score = simcc_decode(lx, ly, self.model.split_ratio)
        coords = crop_to_image(xy.cpu().numpy(), np.asarray(crop_boxes, np.float32), self.contract.crop_hw)
        return coords.astype(np.float32), score.cpu().numpy().astype(np.float32)


class FamiRunner(_Runner):
    """FAMI-Pose over crop sets: backbone once per crop, head once per key frame."""

    def __init__(self, model: FAMIPose, contract: PreprocessContract, device: str | torch.device = "cpu",
                 *, amp: bool = True, batch_size: int = 16, precision: str | None = None) -> None:
        super().__init__(model, contract, device, amp, precision)
        self.batch_size = int(batch_size)

    def features(self, crops: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 BGR (M, h, w, 3) -> frozen backbone features (M, C, h/4, w/4) on the device."""
        outs = []
        with _flush_denormal(self.flush), torch.inference_mode(), self._autocast():
            for s in range(0, len(crops), self.batch_size):
                outs.append(self.model.hrnet.forward_features(self.prepare(crops[s:s + self.batch_size]))[1])
        return torch.cat(outs)

    def heatmaps(self, feats: torch.Tensor, key_rows: np.ndarray) -> torch.Tensor:
        """features (M, C, h, w), key_rows (N, 1+S) -> final heatmaps (N, K, h, w) float32."""
        rows = torch.as_tensor(np.asarray(key_rows), device=feats.device)
        outs = []
        with _flush_denormal(self.flush), torch.inference_mode(), self._autocast():
            for s in range(0, len(rows), self.batch_size):
                r = rows[s:s + self.batch_size]
                outs.append(self.model.forward_from_features(feats[r[:, 0]], feats[r[:, 1:]]).heatmaps.float())
        return torch.cat(outs)

    def __call__(self, crops: torch.Tensor | np.ndarray, key_rows: np.ndarray, crop_boxes: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """-> image px (N, K, 2), heatmap-peak scores (N, K) for the N key frames."""
        if len(key_rows) == 0:
            k = self.model.num_joints
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        hm = self.heatmaps(self.features(crops), key_rows)
        cells, peak = fami_decode(hm)
        coords = crop_to_image(cells, np.asarray(crop_boxes, np.float32), tuple(hm.shape[-2:]))
        return coords.astype(np.float32), peak
