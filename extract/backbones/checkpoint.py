"""Safe reading of foreign checkpoints and strict key matching with messages that name keys.

``torch.load`` runs with ``weights_only=True`` plus an allow-list of exactly the numpy objects
that reference checkpoints contain (numpy scalars such as TCMR's ``performance``, arrays,
dtypes). Anything else in the pickle - in particular a global that would run code - is refused
with ``CheckpointError`` naming the file; ``trust=True`` is the explicit opt-in to full unpickling.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

__all__ = ["CheckpointError", "load_checkpoint", "file_sha256", "check_keys", "NUMPY_SAFE_GLOBALS"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; names file and keys."""


def _numpy_safe_globals() -> list[Any]:
    from numpy._core import multiarray

    out: list[Any] = [multiarray.scalar, multiarray._reconstruct, np.dtype, np.ndarray,
                      # numpy < 2 wrote the old module path into pickles
                      (multiarray.scalar, "numpy.core.multiarray.scalar"),
                      (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
                 "UInt8DType", "BoolDType"):
        if hasattr(np.dtypes, name):
            out.append(getattr(np.dtypes, name))
    return out


NUMPY_SAFE_GLOBALS = _numpy_safe_globals()


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Any:
    """Load a torch checkpoint onto the CPU, safely unless ``trust=True``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty (zero bytes)")
    try:
        if trust:
            return torch.load(p, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{p}: refused to unpickle: the file contains objects outside the allow-list (tensors, "
            f"containers, numpy scalars/arrays). Pass trust=True (--trust-checkpoint) only for a file "
            f"you trust; the loader said: {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({e})") from e


def _optional(key: str) -> bool:
    # Checkpoints saved before torch 0.4.1 (the original torchvision weights) lack these counters.
    return key.endswith("num_batches_tracked")


def check_keys(state: Mapping[str, torch.Tensor], model: torch.nn.Module, where: str, *,
               ignore_unexpected: Iterable[str] = ()) -> list[str]:
    """Check ``state`` against ``model.state_dict()``: every missing key, leftover key (except
    those starting with a prefix in ``ignore_unexpected``) and shape mismatch raises, naming it.
    Returns the ignored keys."""
    own = model.state_dict()
    prefixes = tuple(ignore_unexpected)
    missing = [k for k in own if k not in state and not _optional(k)]
    ignored = [k for k in state if k not in own and prefixes and k.startswith(prefixes)]
    extra = [k for k in state if k not in own and k not in ignored]
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"unexpected key(s) {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    if bad:
        problems.append(f"shape mismatch {bad[:8]}")
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not fit {type(model).__name__}: "
                              + "; ".join(problems))
    return ignored
