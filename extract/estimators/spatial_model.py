"""Tompson et al.'s spatial model as a refinement layer after any heatmap head.

The paper's graphical model, written as a convolutional network: the belief of joint a is the
product over the other joints v of (prior p(a | v) convolved with v's heatmap), plus a bias that
keeps a missing joint from zeroing the product. In log space the product is a sum::

    pairwise_a = sum_{v != a} log( softplus(W_{a|v}) * relu_or_sigmoid(h_v) + softplus(b_{a|v}) )

(``*`` = 2D convolution; the kernels are kept positive by the softplus). The refined output is
``h_a + gain_a * pairwise_a``: the base head's map is the unary term, and ``gain`` starts at 0,
so an untrained layer returns the base maps unchanged and switching it on never hurts at step 0.

Shapes: heatmaps (N, K, H, W) -> refined (N, K, H, W), same domain as the input (SIKR logits with
``activation='sigmoid'``, MSE heatmaps with ``activation='relu'``). All K*(K-1) kernels run as
one grouped convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpatialModel", "SpatialRefined"]


class SpatialModel(nn.Module):
    """Pairwise-prior refinement over K heatmaps with (kernel x kernel) learned kernels."""

    def __init__(self, num_joints: int, kernel: int = 15, activation: str = "sigmoid") -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"spatial model kernel must be odd, got {kernel}")
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"activation must be 'sigmoid' or 'relu', got {activation!r}")
        k = num_joints
        self.num_joints, self.kernel, self.activation = k, kernel, activation
        # weight[v * K + a] convolves joint v's map into evidence for joint a (grouped by v).
        self.weight = nn.Parameter(torch.full((k * k, 1, kernel, kernel), -4.0))
        self.bias = nn.Parameter(torch.zeros(k * k))
        self.gain = nn.Parameter(torch.zeros(k))
        self.register_buffer("offdiag", (1 - torch.eye(k)).reshape(1, k, k, 1, 1), persistent=False)

    def pairwise(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) maps -> (N, K, H, W) summed log pairwise evidence for each joint."""
        n, k, h, w = heatmaps.shape
        if k != self.num_joints:
            raise ValueError(f"SpatialModel built for {self.num_joints} joints, got maps with {k}")
        x = torch.sigmoid(heatmaps) if self.activation == "sigmoid" else F.relu(heatmaps)
        ev = F.conv2d(x.float(), F.softplus(self.weight), padding=self.kernel // 2, groups=k)
        ev = ev + F.softplus(self.bias).view(1, -1, 1, 1)
        logs = torch.log(ev.clamp_min(1e-12)).view(n, k, k, h, w)  # (N, v, a, H, W)
        return (logs * self.offdiag).sum(1)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        return heatmaps + self.gain.view(1, -1, 1, 1) * self.pairwise(heatmaps).to(heatmaps.dtype)


class SpatialRefined(nn.Module):
    """``base`` (any module returning (N, K, H, W) maps) followed by a :class:`SpatialModel`.

    ``freeze_base=True`` trains the spatial model on top of frozen heatmaps (the base runs in
    eval mode without gradients); otherwise both train jointly, as in the paper."""

    def __init__(self, base: nn.Module, spatial: SpatialModel, freeze_base: bool = False) -> None:
        super().__init__()
        self.base, self.spatial, self.freeze_base = base, spatial, bool(freeze_base)
        if self.freeze_base:
            for p in self.base.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "SpatialRefined":
        super().train(mode)
        if self.freeze_base:
            self.base.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_base:
            with torch.no_grad():
                maps = self.base(x)
        else:
            maps = self.base(x)
        return self.spatial(maps)
