"""SimCC coordinate-classification head, its two losses and decode (leeyegy/SimCC semantics).

Each joint's backbone map (B, J, h, w) is flattened to h*w and classified into
W*k x-bins and H*k y-bins (``mlp_head_x`` / ``mlp_head_y``; k = split ratio, 2.0 by
default, 1.5 for the 384x288 SA config). A bin index i corresponds to input pixel i/k.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SimCCHead", "simcc_decode", "gaussian_soft_labels", "coords_to_bins", "KLDiscretLoss",
           "LabelSmoothingLoss"]


class SimCCHead(nn.Module):
    """map_size (h, w) of the joint maps, image_size (W, H) of the input crop.

    forward(maps (B, J, h, w)) -> (x logits (B, J, int(W*k)), y logits (B, J, int(H*k))).
    """

    def __init__(self, map_size: tuple[int, int], image_size: tuple[int, int], split_ratio: float = 2.0) -> None:
        super().__init__()
        h, w = map_size
        self.map_size, self.image_size, self.split_ratio = (h, w), tuple(image_size), float(split_ratio)
        self.mlp_head_x = nn.Linear(h * w, int(image_size[0] * split_ratio))
        self.mlp_head_y = nn.Linear(h * w, int(image_size[1] * split_ratio))

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(maps.shape[-2:]) != self.map_size:
            raise ValueError(f"SimCCHead: maps of size {tuple(maps.shape[-2:])}, expected {self.map_size}")
        flat = maps.flatten(2)
        return self.mlp_head_x(flat), self.mlp_head_y(flat)


def simcc_decode(x_logits: torch.Tensor, y_logits: torch.Tensor,
                 split_ratio: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax decode. x_logits (B, J, Wk), y_logits (B, J, Hk) ->
    (coords (B, J, 2) in input pixels = argmax / k, score (B, J)).

    The score is the smaller of the two peak softmax probabilities, as SimCC's
    validation code keeps the less confident axis.
    """
    px, ix = torch.softmax(x_logits, dim=-1).max(dim=-1)
    py, iy = torch.softmax(y_logits, dim=-1).max(dim=-1)
    coords = torch.stack([ix, iy], dim=-1).to(x_logits.dtype if x_logits.is_floating_point() else torch.float32)
    return coords / split_ratio, torch.minimum(px, py)


def gaussian_soft_labels(coords: torch.Tensor, image_size: tuple[int, int], split_ratio: float = 2.0,
                         sigma: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D Gaussian targets of SA-SimCC. coords (B, J, 2) input pixels (x, y);
    image_size (W, H); sigma in bins. Returns (B, J, int(W*k)), (B, J, int(H*k)).

    Each label is exp(-(i - mu)^2 / (2 sigma^2)) / (sigma sqrt(2 pi)) at bin i with
    mu = coord * k: a sampled density, not renormalised to sum 1 (as in SimCC).
    """
    out = []
    for axis, size in enumerate(image_size):
        bins = torch.arange(int(size * split_ratio), dtype=coords.dtype, device=coords.device)
        mu = coords[..., axis:axis + 1] * split_ratio
        out.append(torch.exp(-((bins - mu) ** 2) / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi)))
    return out[0], out[1]


def coords_to_bins(coords: torch.Tensor, split_ratio: float = 2.0) -> torch.Tensor:
    """Integer bin targets (B, J, 2) for the one-hot / label-smoothing loss: floor(coord * k)
    (SimCC casts the scaled coordinate to int)."""
    return torch.floor(coords * split_ratio).long()


def _weights(target_weight: torch.Tensor | None, b: int, j: int, like: torch.Tensor) -> torch.Tensor:
    if target_weight is None:
        return torch.ones(b, j, dtype=like.dtype, device=like.device)
    return target_weight.reshape(b, j).to(like.dtype)


class KLDiscretLoss(nn.Module):
    """SA-SimCC loss: per (sample, joint, axis) mean over bins of KL(label || softmax(logits))
    (``KLDivLoss(reduction='none')`` on log-softmax), times the joint weight, mean over the
    batch, summed over joints and both axes, divided by J.

    forward(x_logits (B, J, Wk), y_logits (B, J, Hk), target_x, target_y (same shapes),
    target_weight (B, J[, 1]) | None) -> scalar.
    """

    def forward(self, x_logits: torch.Tensor, y_logits: torch.Tensor, target_x: torch.Tensor,
                target_y: torch.Tensor, target_weight: torch.Tensor | None = None) -> torch.Tensor:
        b, j = x_logits.shape[:2]
        w = _weights(target_weight, b, j, x_logits)
        loss = x_logits.new_zeros(())
        for logits, tgt in ((x_logits, target_x), (y_logits, target_y)):
            per = F.kl_div(F.log_softmax(logits, dim=-1), tgt, reduction="none").mean(dim=-1)  # (B, J)
            loss = loss + (per * w).mean(dim=0).sum()
        return loss / j


class LabelSmoothingLoss(nn.Module):
    """One-hot SimCC loss with label smoothing (SimCC's ``NMTCritierion``).

    The smoothed label puts 1 - s on the target bin and s / (M - 1) on every other of the
    M bins; the per-row loss is the mean over bins of KL(label || softmax). With s = 0 it
    is the negative log-likelihood of the target bin (the reference's s = 0 branch cannot
    run: it averages a 1-D NLL over dim 1). Weighted, batch-averaged, summed over joints
    and axes, divided by J.

    forward(x_logits (B, J, Wk), y_logits (B, J, Hk), target_bins (B, J, 2) long,
    target_weight (B, J[, 1]) | None) -> scalar.
    """

    def __init__(self, label_smoothing: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def _rows(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=-1)
        m = logits.shape[-1]
        if self.label_smoothing == 0.0:
            return -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        gt = torch.full_like(logp, self.label_smoothing / (m - 1))
        gt.scatter_(-1, labels.unsqueeze(-1), 1.0 - self.label_smoothing)
        return F.kl_div(logp, gt, reduction="none").mean(dim=-1)

    def forward(self, x_logits: torch.Tensor, y_logits: torch.Tensor, target_bins: torch.Tensor,
                target_weight: torch.Tensor | None = None) -> torch.Tensor:
        b, j = x_logits.shape[:2]
        w = _weights(target_weight, b, j, x_logits)
        loss = x_logits.new_zeros(())
        for axis, logits in enumerate((x_logits, y_logits)):
            labels = target_bins[..., axis].long()
            if (labels < 0).any() or (labels >= logits.shape[-1]).any():
                raise ValueError(f"target bins on axis {'xy'[axis]} outside [0, {logits.shape[-1]})")
            loss = loss + (self._rows(logits, labels) * w).mean(dim=0).sum()
        return loss / j
