"""poselift's own checkpoints: a checkpoint alone rebuilds its model.

Stored: model name and constructor arguments, weights, the resolved config, the content
fingerprints of the input caches, the package version, epoch, optimizer state and RNG
states (as tensors / plain Python types only, so ``torch.load(weights_only=True)`` reads
them without unpickling arbitrary objects).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from poselift.core.checkpoints import CheckpointError, UnsafeCheckpointError
from poselift.core.checkpoints import load_checkpoint as read_checkpoint

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

FORMAT = "poselift-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, *, model_name: str, model_args: dict[str, Any],
                    state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                    cache_fingerprints: dict[str, str], epoch: int,
                    optimizer: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write atomically (tmp + rename) so a crash never leaves a half checkpoint."""
    from poselift import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "poselift_version": __version__,
        "model_name": model_name, "model_args": model_args,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "config": config, "cache_fingerprints": cache_fingerprints, "epoch": int(epoch),
        "optimizer": optimizer, "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a poselift checkpoint with the shared safe reader (no trust option: our own files
    never need one)."""
    if not Path(path).exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = read_checkpoint(path, map_location=map_location)
    except UnsafeCheckpointError as e:
        raise CheckpointError(str(e).split("; if you trust")[0]
                              + "; a poselift checkpoint holds only tensors and plain types, "
                              "so this file is foreign or tampered with") from None
    except CheckpointError as e:
        raise CheckpointError(f"{e}. VideoPose3D .bin files load with "
                              f"poselift.lifting.load_videopose3d, TCMR/VIBE .pth.tar with load_tcmr"
                              ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a poselift checkpoint (no '{FORMAT}' marker)")
    return ckpt
