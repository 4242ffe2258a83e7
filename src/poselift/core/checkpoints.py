"""The one checkpoint error, the one safe reader, the one state-dict unwrapper and the one
strict loader for every stage.

Loading goes through ``poselift.datasets.safe_pickle.safe_torch_load`` (``weights_only=True``
plus the numpy objects reference checkpoints contain); a refused global becomes a
``CheckpointError`` naming the file; ``trust=True`` is the explicit opt-in to full unpickling.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from poselift.datasets.safe_pickle import UnsafePickleError, safe_torch_load
# one sha256 for weight files: the zoo verifies downloads with it, the caches record it
from poselift.zoo.download import file_sha256

from .errors import UserError

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_checkpoint", "file_sha256", "unwrap_state_dict", "check_keys",
           "load_strict", "add_trust_flag"]


class CheckpointError(UserError, ValueError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model; names file and keys.

    Also a ValueError and a RuntimeError: the three classes it replaces had those bases, and
    callers that catch them keep working."""


class UnsafeCheckpointError(CheckpointError, UnsafePickleError):
    """The restricted unpickler refused a global of a checkpoint (nothing was executed).

    Also an :class:`UnsafePickleError` (so a ``pickle.UnpicklingError``): callers that caught
    the reader's refusal before it became a :class:`CheckpointError` keep working."""

    def __init__(self, refusal: UnsafePickleError) -> None:
        self.source, self.global_name = refusal.source, refusal.global_name
        Exception.__init__(self, f"{refusal} (allowed: tensors, containers, numpy scalars/arrays)")


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False,
                    map_location: str | torch.device = "cpu") -> Any:
    """Load a torch checkpoint (onto the CPU by default), safely unless ``trust=True``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty (zero bytes)")
    try:
        return safe_torch_load(p, map_location=map_location, trust=trust)
    except UnsafePickleError as e:
        raise UnsafeCheckpointError(e) from e
    except Exception as e:  # noqa: BLE001 - torch's readers raise assorted types on junk bytes
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({type(e).__name__}: {first})") from e


def unwrap_state_dict(obj: Any, where: str, *,
                      wrappers: tuple[str, ...] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` state dict inside a checkpoint object.

    Takes the first of ``wrappers`` that holds a mapping (training checkpoints wrap the weights
    as ``{"state_dict": ...}`` or ``{"model": ...}``) and strips DataParallel's ``module.``
    prefix. Anything else, or a non-tensor entry, raises :class:`CheckpointError` naming
    ``where`` and the entry."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a state dict (mapping of tensors), got "
                              f"{type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{where}: key {k!r} holds {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _optional(key: str) -> bool:
    # Checkpoints saved before torch 0.4.1 (the original torchvision weights) lack these counters.
    return key.endswith("num_batches_tracked")


def check_keys(state: Mapping[str, torch.Tensor], model: torch.nn.Module, where: str, *,
               ignore_unexpected: Iterable[str] = (), keep_model: Iterable[str] = ()) -> list[str]:
    """Check ``state`` against ``model.state_dict()``: every missing key, leftover key (except
    those starting with a prefix in ``ignore_unexpected``) and shape mismatch raises one
    :class:`CheckpointError` naming ``where`` and all of them. Model keys starting with a
    prefix in ``keep_model`` (and BN ``num_batches_tracked``) may be absent. Returns the
    ignored keys."""
    own = model.state_dict()
    prefixes = tuple(ignore_unexpected)
    keep = tuple(keep_model)
    missing = [k for k in own if k not in state and not _optional(k)
               and not (keep and k.startswith(keep))]
    ignored = [k for k in state if k not in own and prefixes and k.startswith(prefixes)]
    extra = [k for k in state if k not in own and k not in ignored]
    bad = [f"{k!r} has shape {tuple(state[k].shape)}, model expects {tuple(own[k].shape)}"
           for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"unexpected key(s) {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    if bad:
        problems.append(f"shape mismatch [{'; '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}]")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems)
                              + f" (the checkpoint does not fit {type(model).__name__})")
    return ignored


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str, *,
                ignore_unexpected: Iterable[str] = (), keep_model: Iterable[str] = ()) -> list[str]:
    """Load ``state`` into ``model`` after :func:`check_keys` (same arguments) found it fits.
    Keys the checkpoint may lack (``num_batches_tracked``, ``keep_model`` prefixes) keep the
    model's values. Returns the ignored checkpoint keys."""
    ignored = check_keys(state, model, where, ignore_unexpected=ignore_unexpected,
                         keep_model=keep_model)
    full = model.state_dict()
    full.update((k, v) for k, v in state.items() if k in full)
    model.load_state_dict(full, strict=True)
    return ignored


def add_trust_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """The one spelling, ``--trust-checkpoint`` (dest ``trust_checkpoint``), of the opt-in to
    full unpickling; ``--trust-pickle``, the former spelling of some commands, stays accepted
    but is no longer listed."""
    parser.add_argument("--trust-checkpoint", action="store_true", dest="trust_checkpoint",
                        help=f"allow full unpickling of {what} (runs code from the file: trusted files only)")
    parser.add_argument("--trust-pickle", action="store_true", dest="trust_checkpoint",
                        help=argparse.SUPPRESS)
