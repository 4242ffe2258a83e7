"""What a benchmark needs to say about the machine: CPU model and the flags that decide the
result (AVX512, AVX512-BF16, AMX), measured matmul peaks, FLOPs of a training step.

The peaks are measured, not taken from a data sheet: on a shared, loaded machine the
achievable rate is what the other figures of the same run must be compared with.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from poselift.core.precision import cpu_flags, cpu_model_name

__all__ = ["machine_line", "matmul_peak_gflops", "step_flops", "with_threads"]

RELEVANT = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def machine_line(device: torch.device) -> str:
    """One line: CPU model, cores, relevant flags, torch version and threads (or the GPU)."""
    fl = cpu_flags()
    have = [f for f in RELEVANT if f in fl]
    missing = [f for f in ("avx512_bf16", "amx_bf16") if f not in fl]
    s = (f"{cpu_model_name()}, {os.cpu_count()} logical cores, flags: {' '.join(have) or 'none'}"
         + (f" (no {', '.join(missing)})" if missing else "")
         + f", torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    if device.type == "cuda":
        s += f"; GPU {torch.cuda.get_device_name(device)}"
    return s


def with_threads(n: int) -> Callable[[], None]:
    """Set torch's intra-op threads to ``n``; returns a function restoring the old value."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return lambda: torch.set_num_threads(old)


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048,
                       seconds: float = 1.0) -> float:
    """Best-of GFLOP/s of an n x n x n matmul in ``dtype`` (best single call: the least
    disturbed by other processes on a shared machine)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b, out=out)
    sync()
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs torch's counter attributes to one call of ``step`` (matmuls / convs, forward
    and backward; elementwise ops, batch norm and the optimizer are not counted)."""
    with FlopCounterMode(display=False) as fc:
        step()
    return int(fc.get_total_flops())
