"""The one checkpoint error, the one safe reader and the key checker for every stage.

Loading goes through ``poselift.datasets.safe_pickle.safe_torch_load`` (``weights_only=True``
plus the numpy objects reference checkpoints contain); a refused global becomes a
``CheckpointError`` naming the file; ``trust=True`` is the explicit opt-in to full unpickling.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from poselift.datasets.safe_pickle import UnsafePickleError, safe_torch_load

from .errors import UserError

__all__ = ["CheckpointError", "load_checkpoint", "file_sha256", "check_keys", "add_trust_flag"]


class CheckpointError(UserError, ValueError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model; names file and keys.

    Also a ValueError and a RuntimeError: the three classes it replaces had those bases, and
    callers that catch them keep working."""


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
        return safe_torch_load(p, map_location="cpu", trust=trust)
    except UnsafePickleError as e:
        raise CheckpointError(f"{e} (allowed: tensors, containers, numpy scalars/arrays)") from e
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


def add_trust_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """The one spelling, ``--trust-checkpoint`` (dest ``trust_checkpoint``), of the opt-in to
    full unpickling; ``--trust-pickle``, the former spelling of some commands, stays accepted
    but is no longer listed."""
    parser.add_argument("--trust-checkpoint", action="store_true", dest="trust_checkpoint",
                        help=f"allow full unpickling of {what} (runs code from the file: trusted files only)")
    parser.add_argument("--trust-pickle", action="store_true", dest="trust_checkpoint",
                        help=argparse.SUPPRESS)
