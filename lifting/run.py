"""The scaffold both training loops share: seeding, output folder, resume, saving, summary.

The loops themselves (``videopose3d.train``, ``tcmr.train``) keep only what differs: their
step, their schedule and their validation. Every function here is safe under ``torchrun``:
files are written by rank 0 only, and the collective calls are made on every rank.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import dump_config
from .distributed import DistContext, barrier, gather_rng_states, restore_rng_state

__all__ = ["seed_everything", "guarded_step", "start_run", "resume_checkpoint", "rng_extra", "save_epoch",
           "finish_run", "init_provenance", "check_resume_init"]


def seed_everything(seed: int) -> None:
    """Seed torch's and numpy's global generators (numpy takes the seed modulo 2**32)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def guarded_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any,
                 describe: Callable[[], str]) -> None:
    """One optimizer update of both training loops, refused for a non-finite loss.

    The check comes before ``backward``: a NaN/inf loss raises ``RuntimeError(describe())``
    (which names epoch, step and batch) while the weights, and so the last saved checkpoint,
    are still good. ``scaler`` is the precision's GradScaler (a pass-through in fp32/bf16)."""
    if not bool(torch.isfinite(loss.detach())):
        raise RuntimeError(describe())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def start_run(cfg: Any, out: Path, ctx: DistContext) -> None:
    """Rank 0 creates ``out`` and writes ``config.yaml``; every rank waits for it."""
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    barrier(ctx)


def resume_checkpoint(last: Path, fingerprints: dict[str, str], ctx: DistContext,
                      map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``last``, refuse it when it was trained on other caches, and restore every rank's
    RNG state (and the CUDA generator's, when it was saved). The caller restores the model,
    optimizer and schedule from the returned checkpoint."""
    ck = load_checkpoint(last, map_location=map_location)
    if ck["cache_fingerprints"] != fingerprints:
        raise RuntimeError(f"{last}: was trained on other caches ({ck['cache_fingerprints']}); "
                           f"use another --out-dir or delete it")
    ex = ck["extra"]
    restore_rng_state(ex.get("rank_rng"), ex["torch_rng"], ctx, str(last))
    if ctx.device.type == "cuda" and ex.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ex["cuda_rng"])
    return ck


def init_provenance(path: str | Path, kind: str, **details: Any) -> dict[str, Any]:
    """What a run fine-tuned from: the resolved file, its sha256 and size, the checkpoint
    ``kind`` (``videopose3d``, ``tcmr``, ``poselift``) and loader ``details``. Stored in every
    checkpoint's ``extra['init']`` and in ``summary.json``, so a result names its start."""
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"path": str(p.resolve()), "sha256": h.hexdigest(), "bytes": p.stat().st_size,
            "kind": kind, **details}


def check_resume_init(ck: dict[str, Any], init: str, last: Path) -> None:
    """Refuse to resume ``last`` under another ``--init`` than the one it started from (the
    config's ``init`` field; weights then come from ``last``, never from the init file)."""
    before = (ck.get("config") or {}).get("init", "") or ""
    if before != (init or ""):
        raise RuntimeError(f"{last}: started from init {before or 'none'!r}, this run asks for "
                           f"{init or 'none'!r}; pass the same --init to resume, or use another "
                           f"--out-dir or --no-resume")


def rng_extra(ctx: DistContext) -> dict[str, Any]:
    """The RNG states a checkpoint carries for an exact resume. A collective: call it on every
    rank, before rank 0 goes on to save."""
    rngs = gather_rng_states(ctx)
    return {"torch_rng": rngs[0], "rank_rng": rngs if ctx.enabled else None,
            "cuda_rng": torch.cuda.get_rng_state() if ctx.device.type == "cuda" else None}


def save_epoch(out: Path, epoch: int, ck_kw: dict[str, Any], *, every: int = 0,
               is_best: bool = False) -> None:
    """``last.pt`` always, ``epoch_<n>.pt`` every ``every`` epochs (0: never), ``best.pt`` when
    ``is_best``; ``ck_kw`` are :func:`save_checkpoint`'s keyword arguments."""
    save_checkpoint(out / "last.pt", **ck_kw)
    if every and epoch % every == 0:
        save_checkpoint(out / f"epoch_{epoch}.pt", **ck_kw)
    if is_best:
        save_checkpoint(out / "best.pt", **ck_kw)


def finish_run(out: Path, summary: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """Rank 0 writes ``summary.json``; returns ``summary``."""
    if ctx.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
