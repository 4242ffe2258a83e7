"""Dropout whose CPU mask costs a tenth of torch's.

torch's CPU dropout draws its mask with ``bernoulli_``, one Mersenne-Twister draw per
element: about 10 ns per element on the project's CPU, i.e. 12 ms for one 128 x 9 x 1024
activation and 15-20 % of a bf16 VideoPose3D training step (profiled, docs/benchmarks.md).
:class:`FastDropout` draws the same kind of mask from numpy's SFC64 generator, which fills
random bytes at ~0.4 ns per byte, and builds the mask directly in the activation's dtype.

Semantics are those of torch's CPU dropout (``_dropout_impl``): in training every element
is kept with probability ``1 - p`` and multiplied by ``1 / (1 - p)``, the scaled mask being
held in the input's dtype (so in bf16 the scale is rounded exactly as torch rounds it);
in evaluation the input is returned unchanged. Two details differ and are documented here:

- the keep decision compares 8 random bits with ``round(256 p)`` when ``p`` is a multiple of
  1/256 (0.25, 0.5, ...: exact), else 16 bits with ``round(65536 p)`` (rate within 8e-6 of
  ``p``); the scale uses the rate actually drawn, so the output stays unbiased;
- the generator is seeded from torch's default CPU generator at every call, so
  ``torch.manual_seed`` makes training reproducible exactly as with ``nn.Dropout`` (but the
  masks are not the ones ``nn.Dropout`` would draw).

CUDA tensors, in-place dropout and dtypes other than float32/float64/bfloat16/float16 take
torch's own path.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastDropout", "dropout_mask"]

# numpy unsigned type with the same width as each supported torch dtype: the scale's bit
# pattern times a 0/1 keep array gives the scaled mask in one pass, in the target dtype.
_BITS = {torch.float32: (np.uint32, torch.int32), torch.float64: (np.uint64, torch.int64),
         torch.bfloat16: (np.uint16, torch.int16), torch.float16: (np.uint16, torch.int16)}
_SIGNED = {np.uint16: np.int16, np.uint32: np.int32, np.uint64: np.int64}


def _threshold(p: float) -> tuple[int, int]:
    """(bits, threshold): keep where a ``bits``-bit random integer is >= threshold."""
    t8 = round(p * 256)
    if abs(t8 - p * 256) < 1e-9:
        return 8, t8
    return 16, min(max(round(p * 65536), 1), 65535)


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """Scaled keep-mask of ``shape`` (values 0 or 1/(1-p_drawn)) in ``dtype``, on the CPU.

    Raises ``ValueError`` for a dtype without a fast path or ``p`` outside (0, 1)."""
    if dtype not in _BITS:
        raise ValueError(f"dropout_mask: no fast path for {dtype}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout_mask: p must be in (0, 1), got {p}")
    n = 1
    for s in shape:
        n *= int(s)
    bits, thr = _threshold(p)
    # One draw from torch's generator seeds numpy's: torch.manual_seed governs the masks.
    seed = int(torch.empty((), dtype=torch.int64).random_())
    words = (n * bits // 8 + 7) // 8
    raw = np.random.Generator(np.random.SFC64(seed)).bit_generator.random_raw(words)
    draws = raw.view(np.uint8 if bits == 8 else np.uint16)[:n]
    keep = draws >= thr
    span = 1 << bits
    scale = span / (span - thr)
    np_bits, t_int = _BITS[dtype]
    pattern = torch.tensor(scale, dtype=dtype).view(t_int).item() & ((1 << (8 * np.dtype(np_bits).itemsize)) - 1)
    mask = np.multiply(keep, np_bits(pattern), dtype=np_bits)
    return torch.from_numpy(mask.view(_SIGNED[np_bits])).view(dtype).view(tuple(shape))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with a fast CPU mask (see the module docstring); no state, same repr,
    ``isinstance(m, nn.Dropout)`` holds, so train/eval switching and checks work unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or self.inplace or x.device.type != "cpu" or x.dtype not in _BITS
                or not 0.0 < self.p < 1.0):
            return F.dropout(x, self.p, self.training, self.inplace)
        return x * dropout_mask(x.shape, self.p, x.dtype)
