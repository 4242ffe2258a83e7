"""Sharded feature extraction: the arguments of ``poselift-extract features`` plus ``--shard``.

Run it the same way on one process, under ``torchrun`` or under ``srun`` (Slurm)::

    poselift-extract-dist OUT.h5 --manifest m.json --weights r50.pth            # one process
    torchrun --nproc_per_node=8 -m ... / srun -n 64 poselift-extract-dist OUT.h5 ...

Each rank extracts its share (``balance_by_frames``) into ``OUT.h5.shard-<r>-of-<W>.h5`` through
``extract_features`` (atomic per sequence, resumable); all shards carry the header of the whole
job (the inputs fingerprint of ALL sequences), so they can be merged. Then, by default, rank 0
waits for the others at a barrier (gloo; needs MASTER_ADDR/MASTER_PORT, which torchrun sets and
docs/slurm_extract.sh exports) and merges the shards, together with any existing OUT.h5, into
OUT.h5 (``poselift.datasets.cache.merge``), deleting the shards. ``--merge none`` leaves the shards
for a separate ``poselift-cache merge OUT.h5 SHARD...`` step. Re-running the same command after a
crash (of one rank or the whole job) resumes every shard; sequences already in OUT.h5 are skipped.

Exit status: 0 all written, 1 some sequences failed (on any rank), 2 bad input / error.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from poselift.core.cli import run_guarded
from poselift.core.device import resolve_device
from poselift.core.progress import progress_mode

from .cli import contract_from_args, load_backbone, specs_from_args
from .manifest import log_failures, resolve_workers

__all__ = ["main", "build_parser", "run_sharded"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """``poselift-extract features``'s parser plus the sharding options."""
    from .cli import build_parser as base_parser

    sub = next(a for a in base_parser()._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices["features"]
    p.prog = "poselift-extract-dist"
    p.description = __doc__
    g = p.add_argument_group("sharding")
    g.add_argument("--shard", choices=["auto", "none"], default="auto",
                   help="auto: split the sequences across torchrun/Slurm ranks (one process if "
                        "neither); none: this process does everything (default: auto)")
    g.add_argument("--merge", choices=["auto", "none"], default="auto",
                   help="auto: rank 0 merges the shards into OUT after a barrier; none: leave them "
                        "for `poselift-cache merge` (default: auto)")
    g.add_argument("--keep-shards", action="store_true", help="do not delete the shards after merging")
    g.add_argument("--barrier-timeout", type=float, default=48.0,
                   help="hours rank 0 waits for the slowest rank before giving up (default: 48)")
    return p


def _init_group(info, hours: float) -> bool:
    """A gloo group for the end-of-run barrier; False when no rendezvous address is known."""
    import torch.distributed as dist

    from poselift.lifting.distributed import init_group

    if info.world_size == 1:
        return False
    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        return False
    if not dist.is_initialized():
        os.environ.setdefault("RANK", str(info.rank))
        os.environ.setdefault("WORLD_SIZE", str(info.world_size))
        init_group("gloo", info.rank, info.world_size, datetime.timedelta(hours=hours))
    return True


def run_sharded(a: argparse.Namespace) -> int:
    """Extract this rank's share, then (rank 0) merge; see the module docstring."""
    import torch

    from poselift.datasets.cache import Cache
    from poselift.datasets.cache.merge import merge_caches

    from .features import extract_features, input_fingerprints, inputs_fingerprint
    from .sharding import RankInfo, balance_by_frames, rank_from_env, shard_path, shard_paths

    info = rank_from_env() if a.shard == "auto" else RankInfo()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    bad_inputs: dict[str, str] = {}  # unreadable entries: the same on every rank, counted on rank 0
    specs = specs_from_args(a, bad_inputs)
    if info.rank == 0:
        log_failures(bad_inputs)
    else:
        bad_inputs = {}
    # The header of every shard names ALL inputs, so shards of one job merge and a shard of
    # another job (other manifest) is refused.
    fingerprint = inputs_fingerprint(specs)
    mine = [specs[i] for i in balance_by_frames([len(s.boxes) for s in specs], info.world_size)[info.rank]]
    done: set[str] = set()
    if out.exists() and not a.overwrite:
        old = Cache(out)  # identity is checked again when merging
        prints = input_fingerprints(specs)  # inputs changed since `out` was made are re-done
        done = {s for s in old.ids if old.header.input_fingerprints.get(s, prints.get(s)) == prints.get(s)}
    todo = [s for s in mine if s.seq_id not in done]
    contract = contract_from_args(a)
    model, sha = load_backbone(a)
    if info.local_rank and torch.cuda.is_available() and a.device in ("auto", "cuda"):
        device = f"cuda:{info.local_rank % torch.cuda.device_count()}"
    else:
        device = str(resolve_device(a.device))
    grouped = _init_group(info, a.barrier_timeout) if a.merge == "auto" else False
    target = shard_path(out, info.rank, info.world_size) if info.world_size > 1 else out
    failed: dict[str, str] = dict(bad_inputs)
    status: dict[str, Any] = {"rank": info.rank, "written": 0, "failed": len(failed)}
    if todo or info.world_size == 1:
        res = extract_features(todo, target, model, contract, batch_size=a.batch_size,
                               num_workers=resolve_workers(a.workers, device), device=device, dtype=a.dtype, weights_sha256=sha,
                               extractor="hmr" if a.backbone == "hmr" else None, dataset=a.dataset,
                               fingerprint=fingerprint, compile=a.compile, amp=not a.no_amp,
                               overwrite=a.overwrite, progress=progress_mode(a),
                               precision=a.precision)
        failed.update(res.failed)  # each failure was logged once where it happened
        status.update(written=len(res.written), failed=len(failed), frames=res.frames,
                      seconds=res.seconds)
        print(f"[rank {info.rank}/{info.world_size}] {target}: wrote {len(res.written)}, skipped "
              f"{len(res.skipped) + len(mine) - len(todo)}, failed {len(failed)}; {res.frames} "
              f"frames of written sequences in {res.seconds:.1f} s", flush=True)
    rc = 1 if failed else 0
    if info.world_size == 1:
        return rc
    statuses = [status]
    if grouped:
        import torch.distributed as dist

        statuses = [None] * info.world_size
        dist.all_gather_object(statuses, status)  # also the barrier: every shard is final now
    elif a.merge == "auto":
        print(f"[rank {info.rank}] no MASTER_ADDR/MASTER_PORT for a barrier: shards are left for "
              f"`poselift-cache merge {out} {out}.shard-*-of-{info.world_size}.h5`", file=sys.stderr)
    any_failed = sum(int(s["failed"]) for s in statuses) > 0
    if grouped and info.is_main:
        shards = [p for p in shard_paths(out, info.world_size) if p.exists()]
        inputs = ([out] if out.exists() and not a.overwrite else []) + shards
        m = merge_caches(out, inputs, remove_inputs=not a.keep_shards)
        print(f"merged {len(shards)} shard(s) into {out}: {m.sequences} sequences, {m.frames} frames, "
              f"content fingerprint {m.content_fingerprint[:16]}...", flush=True)
    if grouped:
        import torch.distributed as dist

        from poselift.lifting.distributed import teardown_group

        dist.barrier()  # nobody exits (and lets the launcher tear down) before the merge is done
        teardown_group()  # joins gloo's threads now, not during interpreter finalization
    return 1 if any_failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    return run_guarded("poselift-extract-dist", lambda: run_sharded(a))


if __name__ == "__main__":
    sys.exit(main())
