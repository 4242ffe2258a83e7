"""The reference design of the single-frame training model, with ``nn.Conv1d`` layers.

:class:`StridedConv1dModel` computes exactly what
:class:`~poselift.lifting.temporal_conv.TemporalModelOptimized1f` computes (same
parameters, same state_dict) the way VideoPose3D's ``TemporalModelOptimized1f`` does:
channels-first ``conv1d`` with stride = kernel, ``BatchNorm1d`` on (B, C, T) and strided
residual slices. poselift trains with the GEMM formulation; this twin exists to check
it (train-mode parity of outputs, BatchNorm running statistics and gradients) and to
measure the speed difference (``benchmarks/bench_lifter_train.py``). Measured training
steps (forward + backward + Adam, 1024 channels, 2-core CPU under load): 27 frames at
batch 128 the two are equal (95 vs 97 samples/s); 243 frames at batch 256 this conv1d
form was faster (49 vs 40 samples/s). Both share one state_dict, so either can train.
"""
from __future__ import annotations

import torch

from .temporal_conv import TemporalModelOptimized1f

__all__ = ["StridedConv1dModel"]


class StridedConv1dModel(TemporalModelOptimized1f):
    """Input (B, RF, J_in, F) -> output (B, 1, J_out, 3), via strided ``nn.Conv1d``."""

    def _forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, RF) -> (B, 3*J_out, 1), channels first throughout."""
        x = self.drop(self.relu(self.expand_bn(self.expand_conv(x))))
        for i in range(1, len(self.pad)):
            w = self.filter_widths[i]
            res = x[:, :, self.causal_shift[i] + w // 2:: w]
            x = self.drop(self.relu(self.layers_bn[2 * i - 2](self.layers_conv[2 * i - 2](x))))
            x = res + self.drop(self.relu(self.layers_bn[2 * i - 1](self.layers_conv[2 * i - 1](x))))
        return self.shrink(x)
