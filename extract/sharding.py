"""Split an extraction across processes: who am I, which sequences are mine, where my shard goes.

Rank and world size come from ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK) or, without torchrun,
from Slurm (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID); neither means one process. Sequences
are dealt longest-first to the least-loaded rank (ties to the lower rank), a pure function of the
frame counts, so every rank computes the same assignment without talking to the others, and a
re-run (same world size) gives every rank the same sequences again: its shard resumes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["RankInfo", "rank_from_env", "balance_by_frames", "shard_path", "shard_paths"]


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job; ``launcher`` is 'torchrun', 'slurm' or 'single'."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from None


def rank_from_env(env: Mapping[str, str] | None = None) -> RankInfo:
    """Rank info from torchrun's variables, else Slurm's, else a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        info = RankInfo(_int(env, "RANK"), _int(env, "WORLD_SIZE"),
                        _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, "torchrun")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        info = RankInfo(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                        _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0, "slurm")
    else:
        return RankInfo()
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"bad {info.launcher} environment: rank {info.rank} of world size "
                         f"{info.world_size}")
    return info


def balance_by_frames(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices of ``lengths`` per rank: longest first to the least-loaded rank (deterministic).

    Greedy LPT: the largest load is at most 4/3 of the optimum, and at most the mean load plus
    the longest sequence. Each rank's list is in input order (so shards resume in a stable order).
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    bins: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        r = min(range(world_size), key=lambda k: (load[k], k))
        bins[r].append(i)
        load[r] += int(lengths[i])
    return [sorted(b) for b in bins]


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``<out>.shard-<rank>-of-<world>.h5`` beside the final cache."""
    out = Path(out)
    return out.with_name(f"{out.name}.shard-{rank}-of-{world_size}.h5")


def shard_paths(out: str | os.PathLike, world_size: int) -> list[Path]:
    return [shard_path(out, r, world_size) for r in range(world_size)]
