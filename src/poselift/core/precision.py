"""Numeric precision of training and inference: ``fp32 | bf16 | fp16 | auto``.

One resolver turns the config value and the device into a :class:`Precision`, which hands
out the autocast context and the gradient scaler and says what it chose and why (that
record goes into checkpoints and reports).

Rules:

- ``fp32``: plain float32 everywhere; on CUDA TF32 stays off (bit-for-bit fp32 semantics
  were asked for).
- ``bf16``: autocast to bfloat16 (CPU or CUDA). Weights, optimizer state and losses stay
  float32, so checkpoints are float32 and load anywhere. bf16 has fp32's exponent range, so
  no gradient scaler is needed. On a CPU without native bf16 (no AVX512-BF16 / AMX) it works
  but is emulated and slower than fp32; the resolver says so in ``reason``.
- ``fp16``: CUDA only, autocast to float16 with a :class:`torch.amp.GradScaler` (fp16's
  small range underflows gradients otherwise). Refused on the CPU with a clear message.
- ``auto``: CUDA -> bf16 where the GPU supports it (compute capability >= 8), else fp16 with
  a scaler; CPU -> bf16 when the CPU has native bf16 dot products (flags ``avx512_bf16`` or
  ``amx_bf16``, read at run time), else fp32.

On CUDA Ampere and newer every mode but ``fp32`` also enables TF32 for the float32 matmuls
and convolutions that autocast leaves in float32.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

__all__ = ["PRECISIONS", "Precision", "PrecisionError", "cpu_flags", "cpu_model_name",
           "cpu_has_native_bf16", "resolve_precision", "inference_precision", "precision_record"]

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags (as /proc/cpuinfo spells them) that give native bf16 dot products.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionError(ValueError):
    """A precision that is unknown or that the device cannot run."""


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def cpu_flags() -> frozenset[str]:
    """Feature flags of this CPU (lower case, /proc/cpuinfo names).

    Without /proc/cpuinfo (macOS, Windows) the flags come from torch's own run-time CPU
    detection (``torch.cpu._is_avx512_supported`` etc.), which knows the ones that matter
    here: avx512f, avx512_bf16 and amx (tile + bf16)."""
    for line in _proc_cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    probes = {"avx512f": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "amx_bf16": "_is_amx_tile_supported", "avx2": "_is_avx2_supported"}
    flags = set()
    for flag, fn in probes.items():
        with contextlib.suppress(Exception):
            if getattr(torch.cpu, fn)():
                flags.add(flag)
    return frozenset(flags)


def cpu_model_name() -> str:
    """``model name`` from /proc/cpuinfo, else the platform's processor string."""
    for line in _proc_cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16)."""
    fl = set(cpu_flags() if flags is None else flags)
    return any(f in fl for f in BF16_CPU_FLAGS)


@dataclass(frozen=True)
class Precision:
    """A resolved precision for one device.

    ``dtype`` is the autocast dtype (None = no autocast, float32); ``scaler`` says whether a
    GradScaler is active (fp16 on CUDA); ``tf32`` whether TF32 was enabled."""

    requested: str
    name: str
    device_type: str
    dtype: torch.dtype | None
    scaler: bool
    tf32: bool
    reason: str

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes (and the loss): autocast to ``dtype`` or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (a transparent no-op otherwise)."""
        return torch.amp.GradScaler(self.device_type if self.device_type == "cuda" else "cpu",
                                    enabled=self.scaler)

    def apply(self) -> "Precision":
        """Set the process-wide switches this precision needs (TF32 on CUDA); returns self."""
        if self.device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
        return self

    def record(self) -> dict[str, Any]:
        """Plain-typed description for checkpoints and reports."""
        return {"requested": self.requested, "resolved": self.name, "device": self.device_type,
                "autocast_dtype": str(self.dtype).replace("torch.", "") if self.dtype else None,
                "grad_scaler": self.scaler, "tf32": self.tf32, "reason": self.reason}


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def resolve_precision(requested: str, device: str | torch.device, *,
                      flags: Iterable[str] | None = None,
                      cuda_capability: tuple[int, int] | None = None) -> Precision:
    """Resolve ``requested`` (one of :data:`PRECISIONS`) for ``device``.

    ``flags`` / ``cuda_capability`` override the run-time detection (tests, reports).
    Raises :class:`PrecisionError` for unknown names and for fp16 on the CPU."""
    req = str(requested).lower().strip()
    if req not in PRECISIONS:
        raise PrecisionError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if dev.type == "cuda":
        cap = cuda_capability or _cuda_capability(dev)
        ampere = cap[0] >= 8
        if req == "auto":
            name = "bf16" if ampere else "fp16"
            why = f"CUDA compute capability {cap[0]}.{cap[1]}: " + (
                "bf16 supported" if ampere else "no bf16 units, fp16 with a gradient scaler")
        else:
            name, why = req, f"requested on CUDA (compute capability {cap[0]}.{cap[1]})"
        return Precision(req, name, "cuda", _DTYPES[name], scaler=name == "fp16",
                         tf32=ampere and name != "fp32", reason=why)
    if dev.type != "cpu":
        if req in ("fp32", "auto"):
            return Precision(req, "fp32", dev.type, None, False, False,
                             f"device type {dev.type!r}: float32")
        raise PrecisionError(f"precision {req!r} is supported on cpu and cuda only, not {dev.type!r}")
    if req == "fp16":
        raise PrecisionError("precision 'fp16' is not supported on the CPU (no fp16 autocast "
                             "kernels worth using, and fp16 training needs a gradient scaler); "
                             "use 'bf16' (or 'auto', which picks bf16 where the CPU has "
                             "AVX512-BF16/AMX)")
    native = cpu_has_native_bf16(flags)
    have = [f for f in BF16_CPU_FLAGS if f in set(cpu_flags() if flags is None else flags)]
    if req == "auto":
        if native:
            return Precision(req, "bf16", "cpu", torch.bfloat16, False, False,
                             f"CPU has native bf16 ({', '.join(have)})")
        return Precision(req, "fp32", "cpu", None, False, False,
                         "CPU has no AVX512-BF16/AMX: bf16 would be emulated, fp32 is faster")
    if req == "bf16":
        why = (f"requested; CPU has native bf16 ({', '.join(have)})" if native else
               "requested; this CPU has no AVX512-BF16/AMX, so bf16 is emulated (slower than fp32)")
        return Precision(req, "bf16", "cpu", torch.bfloat16, False, False, why)
    return Precision(req, "fp32", "cpu", None, False, False, "requested")


def inference_precision(precision: str | None, device: str | torch.device, *,
                        amp: bool = True) -> Precision:
    """Precision of a forward-only path (extraction, ``poselift infer``, evaluation).

    ``precision`` given: :func:`resolve_precision`. ``None``: the behaviour these paths had
    before the switch existed, so existing caches stay reproducible: fp16 autocast on CUDA
    when ``amp``, float32 otherwise (the CPU included)."""
    if precision is not None:
        return resolve_precision(precision, device)
    dev = torch.device(device)
    return resolve_precision("fp16" if amp and dev.type == "cuda" else "fp32", dev)


def precision_record(precision: str | None, device: str | torch.device, amp: bool = True
                     ) -> dict[str, Any]:
    """What a cache header records of a forward path's precision: the resolved name and the
    autocast dtype (not the machine-specific reason), so that resuming a cache in another
    precision is refused instead of mixing numerics."""
    rec = inference_precision(precision, device, amp=amp).record()
    return {"resolved": rec["resolved"], "autocast_dtype": rec["autocast_dtype"]}
