"""VideoPose3D temporal-convolution lifters (2D keypoint sequences -> 3D poses).

Parameter names, registration order and channel layout follow the reference
VideoPose3D models so that its ``.bin`` checkpoints load with an identity key map:

- input channels are ``joint * F + coord`` (the last two input axes flattened),
- output channels are ``joint * 3 + coord``,
- ``state_dict`` order is ``expand_bn.*``, ``shrink.*``, ``expand_conv.weight``,
  ``layers_conv.*``, ``layers_bn.*``.

Two forward implementations share one parameter layout:

- :class:`TemporalModel`: dilated, valid convolutions over a whole sequence,
  ``T_out = T - RF + 1`` (evaluation / inference);
- :class:`TemporalModelOptimized1f`: strided convolutions computing only the one
  output frame of an ``RF``-frame window (fast training path).

A trajectory model is the same class with ``num_joints_out=1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from poselift.core.dropout import FastDropout

__all__ = [
    "TemporalModel",
    "TemporalModelBase",
    "TemporalModelOptimized1f",
    "bn_momentum_schedule",
    "level_dilations",
    "level_pads",
    "receptive_field_of",
    "validate_filter_widths",
]


def validate_filter_widths(filter_widths: Sequence[int]) -> tuple[int, ...]:
    """Check a width list (non-empty, positive odd integers) and return it as a tuple.

    Odd widths are required because every convolution is centred on a frame;
    an even width has no centre frame for the residual slice.
    """
    widths = tuple(filter_widths)
    if not widths:
        raise ValueError("filter_widths is empty; give at least one (odd) width, e.g. (3, 3, 3)")
    for i, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"filter_widths[{i}] = {w!r} is not an int")
        if w < 1:
            raise ValueError(f"filter_widths[{i}] = {w} must be >= 1")
        if w % 2 == 0:
            raise ValueError(
                f"filter_widths[{i}] = {w} is even; every filter width must be odd "
                f"(got filter_widths={list(widths)})"
            )
    return widths


def level_dilations(filter_widths: Sequence[int]) -> list[int]:
    """Dilation of each level: d_0 = 1, d_i = w_0 * ... * w_{i-1}."""
    widths = validate_filter_widths(filter_widths)
    return [math.prod(widths[:i]) for i in range(len(widths))]


def level_pads(filter_widths: Sequence[int]) -> list[int]:
    """Frames each level removes on either side: pad_i = (w_i - 1) * d_i / 2.

    E.g. (3, 3, 3, 3, 3) -> [1, 3, 9, 27, 81].
    """
    widths = validate_filter_widths(filter_widths)
    return [(w - 1) * d // 2 for w, d in zip(widths, level_dilations(widths))]


def receptive_field_of(filter_widths: Sequence[int]) -> int:
    """Receptive field in frames: 1 + 2 * sum(pads) = product of the widths."""
    return 1 + 2 * sum(level_pads(filter_widths))


def bn_momentum_schedule(epoch: int, total_epochs: int, initial: float = 0.1,
                         final: float = 0.001) -> float:
    """BatchNorm momentum to set after ``epoch`` (1..E) finished, decayed exponentially.

    m(e) = initial * exp(-(e / E) * ln(initial / final)); m(0) = initial, m(E) = final.
    """
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
    return initial * math.exp(-(epoch / total_epochs) * math.log(initial / final))


class TemporalModelBase(nn.Module):
    """Shared parts: BN/shrink created first (this fixes the reference key order).

    Subclasses create ``expand_conv``, ``layers_conv``, ``layers_bn`` and set
    ``self.causal_shift`` (per level, in frames of that level's own time axis).
    """

    def __init__(self, num_joints_in: int, in_features: int, num_joints_out: int,
                 filter_widths: Sequence[int], causal: bool, dropout: float,
                 channels: int) -> None:
        super().__init__()
        widths = validate_filter_widths(filter_widths)
        for name, value in (("num_joints_in", num_joints_in), ("in_features", in_features),
                            ("num_joints_out", num_joints_out), ("channels", channels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_joints_in = num_joints_in
        self.in_features = in_features
        self.num_joints_out = num_joints_out
        self.filter_widths = list(widths)
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.channels = channels
        # Shared parameter-free instances, as in the reference (no state_dict entries).
        # FastDropout: same semantics, CPU mask ~10x cheaper than torch's bernoulli_.
        self.drop = FastDropout(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.pad = level_pads(widths)
        self.causal_shift: list[int] = []
        self.expand_bn = nn.BatchNorm1d(channels, momentum=0.1)
        self.shrink = nn.Conv1d(channels, num_joints_out * 3, 1)

    # -- helpers -----------------------------------------------------------------
    def receptive_field(self) -> int:
        """Input frames needed for one output frame (product of the widths)."""
        return 1 + 2 * sum(self.pad)

    def total_causal_shift(self) -> int:
        """Left offset (frames) that aligns outputs with the last input frame when causal.

        Equals ``(RF - 1) // 2`` when causal and 0 otherwise. The reference
        ``TemporalModel.total_causal_shift`` multiplies its already-dilated
        per-level shifts by the dilation again (91 instead of 13 for 3,3,3); that
        formula is only right for the strided model's undilated shifts. run.py
        never calls it; we compute the value from the widths instead.
        """
        if not self.causal:
            return 0
        return sum((w // 2) * d for w, d in zip(self.filter_widths,
                                                 level_dilations(self.filter_widths)))

    def set_bn_momentum(self, momentum: float) -> None:
        """Set the momentum of every BatchNorm layer (see :func:`bn_momentum_schedule`)."""
        self.expand_bn.momentum = momentum
        for bn in self.layers_bn:
            bn.momentum = momentum

    def constructor_args(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (for own checkpoints)."""
        return {
            "num_joints_in": self.num_joints_in, "in_features": self.in_features,
            "num_joints_out": self.num_joints_out, "filter_widths": list(self.filter_widths),
            "causal": self.causal, "dropout": self.dropout, "channels": self.channels,
        }

    # -- forward -----------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[2] != self.num_joints_in or x.shape[3] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects input (B, T, {self.num_joints_in}, "
                f"{self.in_features}), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, J_in, F) -> (B, T_out, J_out, 3)."""
        self._check_input(x)
        b = x.shape[0]
        # channel = joint * F + coord, channels first for Conv1d.
        h = x.reshape(b, x.shape[1], -1).permute(0, 2, 1)
        h = self._forward_blocks(h)
        return h.permute(0, 2, 1).reshape(b, -1, self.num_joints_out, 3)

    def _forward_blocks(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TemporalModel(TemporalModelBase):
    """Dilated temporal convolutions over whole sequences (reference ``TemporalModel``).

    Input (B, T, J_in, F), T >= RF; output (B, T - RF + 1, J_out, 3). Output frame
    t sees input frames t .. t + RF - 1; it is centred on frame t + (RF - 1) / 2,
    or on the last frame t + RF - 1 when ``causal``. ``dense`` replaces each
    dilated conv by an undilated one of width 2 * pad_i + 1 (same RF).
    """

    def __init__(self, num_joints_in: int, in_features: int, num_joints_out: int,
                 filter_widths: Sequence[int], causal: bool = False, dropout: float = 0.25,
                 channels: int = 1024, dense: bool = False) -> None:
        super().__init__(num_joints_in, in_features, num_joints_out, filter_widths,
                         causal, dropout, channels)
        self.dense = bool(dense)
        widths = self.filter_widths
        self.expand_conv = nn.Conv1d(num_joints_in * in_features, channels, widths[0], bias=False)
        dilations = level_dilations(widths)
        # Residual slice shift per level (already in dilated frames): the block
        # output then lines up with the last frame of its window.
        self.causal_shift = [(w // 2) * d if causal else 0 for w, d in zip(widths, dilations)]
        convs: list[nn.Module] = []
        bns: list[nn.Module] = []
        for i in range(1, len(widths)):
            if dense:
                convs.append(nn.Conv1d(channels, channels, 2 * self.pad[i] + 1, bias=False))
            else:
                convs.append(nn.Conv1d(channels, channels, widths[i], dilation=dilations[i],
                                       bias=False))
            bns.append(nn.BatchNorm1d(channels, momentum=0.1))
            convs.append(nn.Conv1d(channels, channels, 1, bias=False))
            bns.append(nn.BatchNorm1d(channels, momentum=0.1))
        self.layers_conv = nn.ModuleList(convs)
        self.layers_bn = nn.ModuleList(bns)

    def constructor_args(self) -> dict[str, Any]:
        return {**super().constructor_args(), "dense": self.dense}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, J_in, F) with T >= RF -> (B, T - RF + 1, J_out, 3)."""
        self._check_input(x)
        rf = self.receptive_field()
        if x.shape[1] < rf:
            raise ValueError(f"TemporalModel needs T >= receptive field {rf}, got T={x.shape[1]}")
        return super().forward(x)

    def _forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.relu(self.expand_bn(self.expand_conv(x))))
        for i in range(1, len(self.pad)):
            pad, shift = self.pad[i], self.causal_shift[i]
            res = x[:, :, pad + shift: x.shape[2] - pad + shift]
            x = self.drop(self.relu(self.layers_bn[2 * i - 2](self.layers_conv[2 * i - 2](x))))
            x = res + self.drop(self.relu(self.layers_bn[2 * i - 1](self.layers_conv[2 * i - 1](x))))
        return self.shrink(x)


class TemporalModelOptimized1f(TemporalModelBase):
    """Strided training twin of :class:`TemporalModel` (reference ``TemporalModelOptimized1f``).

    Same state_dict keys and shapes; each dilated conv becomes a conv with
    stride = kernel = w_i, so only the single output frame is computed.
    Input (B, RF, J_in, F) -> output (B, 1, J_out, 3).

    ``impl`` picks how the strided layers run (same numbers either way, tests compare):
    ``"conv"`` channels-first ``conv1d`` + ``BatchNorm1d`` (the reference's form; oneDNN
    kernels), ``"gemm"`` time-major reshapes + one matmul per layer, ``"auto"`` = GEMM for
    up to three levels (27 frames) and conv above. Measured on the 2-core CPU, one
    interleaved run, forward + backward + Adam (docs/benchmarks.md): 27 frames x 1024
    channels, batch 128: GEMM 1.27x faster; 243 frames: conv 1.2-3x faster (its batch
    norm over (B, C, T) is much cheaper than over (B*T, C)).
    """

    IMPLS = ("auto", "conv", "gemm")

    def __init__(self, num_joints_in: int, in_features: int, num_joints_out: int,
                 filter_widths: Sequence[int], causal: bool = False, dropout: float = 0.25,
                 channels: int = 1024, impl: str = "auto") -> None:
        super().__init__(num_joints_in, in_features, num_joints_out, filter_widths,
                         causal, dropout, channels)
        if impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {self.IMPLS}, got {impl!r}")
        self.impl = ("gemm" if len(self.filter_widths) <= 3 else "conv") if impl == "auto" else impl
        widths = self.filter_widths
        self.expand_conv = nn.Conv1d(num_joints_in * in_features, channels, widths[0],
                                     stride=widths[0], bias=False)
        # Shifts here are undilated: each level's time axis is already decimated.
        self.causal_shift = [w // 2 if causal else 0 for w in widths]
        convs: list[nn.Module] = []
        bns: list[nn.Module] = []
        for i in range(1, len(widths)):
            convs.append(nn.Conv1d(channels, channels, widths[i], stride=widths[i], bias=False))
            bns.append(nn.BatchNorm1d(channels, momentum=0.1))
            convs.append(nn.Conv1d(channels, channels, 1, bias=False))
            bns.append(nn.BatchNorm1d(channels, momentum=0.1))
        self.layers_conv = nn.ModuleList(convs)
        self.layers_bn = nn.ModuleList(bns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, RF, J_in, F) -> (B, 1, J_out, 3)."""
        self._check_input(x)
        rf = self.receptive_field()
        if x.shape[1] != rf:
            raise ValueError(
                f"TemporalModelOptimized1f needs exactly T = receptive field {rf} frames, "
                f"got T={x.shape[1]}"
            )
        return super().forward(x)

    def _forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_gemm(x) if self.impl == "gemm" else self._forward_conv(x)

    def _forward_conv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, RF) -> (B, 3*J_out, 1), channels first, strided conv1d."""
        x = self.drop(self.relu(self.expand_bn(self.expand_conv(x))))
        for i in range(1, len(self.pad)):
            w = self.filter_widths[i]
            # Centre (or, causal, last) frame of every stride window.
            res = x[:, :, self.causal_shift[i] + w // 2:: w]
            x = self.drop(self.relu(self.layers_bn[2 * i - 2](self.layers_conv[2 * i - 2](x))))
            x = res + self.drop(self.relu(self.layers_bn[2 * i - 1](self.layers_conv[2 * i - 1](x))))
        return self.shrink(x)

    def _forward_gemm(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, RF) -> (B, 3*J_out, 1).

        Every conv here has stride == kernel, so it is a reshape of non-overlapping time
        windows followed by one GEMM; small models spend less time in per-call overhead
        this way than in conv1d.
        """
        B = x.shape[0]
        h = x.transpose(1, 2)  # (B, T, C_in), time-major
        h = self.drop(self.relu(self._bn(self._strided(h, self.expand_conv), self.expand_bn)))
        for i in range(1, len(self.pad)):
            w = self.filter_widths[i]
            # Centre (or, causal, last) frame of every stride window.
            res = h[:, self.causal_shift[i] + w // 2:: w]
            h = self.drop(self.relu(self._bn(self._strided(h, self.layers_conv[2 * i - 2]),
                                             self.layers_bn[2 * i - 2])))
            # squeeze, not [:, :, 0]: its backward is a view, select's allocates and fills.
            pointwise = self.layers_conv[2 * i - 1].weight.squeeze(-1)
            h = res + self.drop(self.relu(self._bn(h @ pointwise.t(), self.layers_bn[2 * i - 1])))
        out = h @ self.shrink.weight.squeeze(-1).t() + self.shrink.bias
        return out.transpose(1, 2).reshape(B, -1, h.shape[1])

    @staticmethod
    def _strided(h: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
        """Conv1d with stride == kernel on time-major (B, T, C_in) -> (B, T // k, C_out)."""
        c_out, c_in, k = conv.weight.shape
        b, t = h.shape[0], h.shape[1] // k
        # A window of k frames is contiguous in time-major memory in (frame, channel) order;
        # the weight is (c_out, c_in, k), i.e. (channel, frame). The activations are put in
        # the weight's order rather than the weight in theirs: at batch 128 they are 3-8x
        # smaller than a 1024x1024x3 weight, and the weight's gradient then comes out of the
        # matmul already in the parameter's layout (a permuted weight needs a strided copy
        # back, slow with a size-3 inner axis). Measured: -7 % (fp32) / -10 % (bf16) step time.
        windows = h.reshape(b, t, k, c_in).transpose(2, 3).reshape(b, t, c_in * k)
        return windows @ conv.weight.reshape(c_out, c_in * k).t()

    @staticmethod
    def _bn(h: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
        """BatchNorm1d over (B, T, C): the statistics over batch and time, as on (B, C, T)."""
        momentum = bn.momentum or 0.0
        if bn.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative average, as nn.BatchNorm1d does
                momentum = 1.0 / float(bn.num_batches_tracked)
        flat = F.batch_norm(h.reshape(-1, h.shape[-1]), bn.running_mean, bn.running_var, bn.weight,
                            bn.bias, bn.training or not bn.track_running_stats, momentum, bn.eps)
        return flat.reshape(h.shape)

