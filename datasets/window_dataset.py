"""A torch Dataset that gathers windows from caches joined by sequence id.

Small fields (2D keypoints, 3D joints: tens of bytes per frame) can be preloaded into one
concatenated array so a whole batch is gathered with one fancy-indexing call. Wide
fields (2048-d features) are always read lazily from HDF5, window by window, through a
file handle opened in the process that reads (one per DataLoader worker): resident
memory then does not grow with the cache size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .cache import Cache, CacheError
from .cache.schema import FIELDS as FIELD_SPECS
from .joints import get_joint_set
from .windows import Windows, gather_indices

__all__ = ["Field", "FlipRule", "CacheWindowDataset", "PRELOAD_MAX_BYTES"]

PRELOAD_MAX_BYTES = 2 << 30  # refuse to preload more than 2 GiB of one field

# (array (B, T, ...), sequence indices (B,)) -> array; used e.g. to normalise pixels per video.
Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FlipRule:
    """Horizontal flip of a joint field: swap left/right joints, negate coordinate 0."""

    perm: np.ndarray
    negate_x: bool = True

    @classmethod
    def for_joint_set(cls, name: str, negate_x: bool = True) -> "FlipRule":
        return cls(get_joint_set(name).flip_permutation(), negate_x)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x: (..., J, C) -> flipped copy."""
        out = x[..., self.perm, :].copy()
        if self.negate_x:
            out[..., 0] *= -1
        return out


@dataclass(frozen=True)
class Field:
    """One output of the dataset: ``cache[field]`` gathered at the window's input frames
    (``at='inputs'``) or target frames (``at='targets'``)."""

    cache: Cache
    field: str
    at: str = "inputs"
    preload: bool = False
    transform: Transform | None = None
    flip: FlipRule | None = None
    dtype: np.dtype = np.dtype(np.float32)


def _converted(arr: np.ndarray, dtype: np.dtype) -> torch.Tensor:
    """``arr`` as a tensor of ``dtype``: numpy allocates, torch converts.

    torch converts float16 -> float32 ~7x faster than numpy's astype, but its own multi-MB
    allocations (aligned, freed every step) fragment glibc's heap: streaming a 35 GiB cache
    grew RSS by ~3.5 GiB that way (benchmarks/bench_large_cache.py). A plain numpy buffer as
    the destination keeps both the speed and a flat RSS.
    """
    out = np.empty(arr.shape, dtype=dtype)
    dst = torch.from_numpy(out)
    dst.copy_(torch.from_numpy(np.ascontiguousarray(arr)))
    return dst


def _check_finite(f: Field, sid: str, arr: np.ndarray, first: int) -> None:
    """Refuse NaN/inf in a float field the cache schema requires finite (rows ``first`` on of
    sequence ``sid``): a corrupt cache would otherwise train to NaN without a word."""
    spec = FIELD_SPECS.get(f.field)
    if spec is None or not spec.check_finite or arr.dtype.kind not in "fc" or not arr.size:
        return
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(1)
    if bad.any():
        rows = np.flatnonzero(bad) + first
        raise CacheError(f"{f.cache.path}: sequence {sid!r}, field {f.field!r}: NaN/inf at frame "
                         f"{int(rows[0])} ({rows.size} frame(s) affected); the cache is corrupt, "
                         f"rebuild this sequence")


class CacheWindowDataset(torch.utils.data.Dataset):
    """Windows over caches.

    Args:
        fields: output name -> Field.
        ids: sequence ids; ``windows.seq`` indexes this list.
        windows: from ``make_windows``.
        flip: ``None``, ``"random"`` (each item flipped with probability 0.5, seeded per
            item by ``seed`` and ``epoch``) or ``"double"`` (every window listed twice, the
            second copy flipped, as VideoPose3D's ChunkedGenerator does).
    Items are dicts of float tensors plus ``seq`` (int), ``target_frames`` and
    ``target_valid`` ((n_targets,) masks) and ``flipped`` (bool).
    """

    def __init__(self, fields: dict[str, Field], ids: Sequence[str], windows: Windows, *,
                 flip: str | None = None, seed: int = 0,
                 frames: dict[str, slice] | None = None) -> None:
        if flip not in (None, "random", "double"):
            raise ValueError(f"flip must be None, 'random' or 'double', got {flip!r}")
        self.fields, self.ids, self.windows, self.flip, self.seed = fields, list(ids), windows, flip, seed
        self.epoch = 0
        # Optional per-sequence frame selection (subset / downsample): window frame i of a
        # sequence is stored frame ``sl.start + i * sl.step``.
        self._sel = {sid: frames[sid] for sid in self.ids} if frames else {}
        self._lengths = {}
        for name, f in fields.items():
            for sid in self.ids:
                n = f.cache.info(sid).n_frames
                if sid in self._sel:
                    n = len(range(*self._sel[sid].indices(n)))
                if self._lengths.setdefault(sid, n) != n:
                    raise CacheError(f"sequence {sid!r}: field {name!r} in {f.cache.path} has {n} "
                                     f"frames, other inputs have {self._lengths[sid]}")
        self._pre: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, f in fields.items():
            if f.preload:
                self._pre[name] = self._preload(f)

    def _preload(self, f: Field) -> tuple[np.ndarray, np.ndarray]:
        first = f.cache.dataset(self.ids[0], f.field)
        total = sum(self._lengths[s] for s in self.ids)
        nbytes = total * int(np.prod(first.shape[1:])) * np.dtype(f.dtype).itemsize
        if nbytes > PRELOAD_MAX_BYTES:
            raise MemoryError(f"{f.cache.path}: preloading field {f.field!r} needs {nbytes / 2**30:.1f} "
                              f"GiB; read it lazily (preload=False)")
        offsets = np.zeros(len(self.ids) + 1, np.int64)
        offsets[1:] = np.cumsum([self._lengths[s] for s in self.ids])
        data = np.empty((total,) + first.shape[1:], dtype=f.dtype)
        for i, sid in enumerate(self.ids):
            arr = f.cache.read(sid, f.field)
            _check_finite(f, sid, arr, 0)
            data[offsets[i]:offsets[i + 1]] = arr[self._sel[sid]] if sid in self._sel else arr
        return data, offsets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows) * (2 if self.flip == "double" else 1)

    def _flip_mask(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.windows)
        if self.flip == "double":
            return idx % n, idx >= n
        if self.flip == "random":
            rng = np.random.default_rng([self.seed, self.epoch])
            coin = rng.random(n) < 0.5  # one draw per window per epoch: reproducible in workers
            return idx, coin[idx]
        return idx, np.zeros(idx.shape, bool)

    def get_batch(self, idx: np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        """Gather a batch of items at once: tensors shaped (B, T, ...)."""
        idx = np.asarray(idx, dtype=np.int64)
        rows, flipped = self._flip_mask(idx)
        inputs, targets, valid = gather_indices(self.windows, rows)
        seq = self.windows.seq[rows]
        out: dict[str, torch.Tensor] = {}
        for name, f in self.fields.items():
            frames = inputs if f.at == "inputs" else targets
            if name in self._pre:
                data, offsets = self._pre[name]
                arr = data[offsets[seq][:, None] + frames]
            else:
                arr = np.stack([self._read_window(f, self.ids[s], fr) for s, fr in zip(seq, frames)])
            if f.transform is None and (f.flip is None or not flipped.any()):
                out[name] = _converted(arr, np.dtype(f.dtype))
                continue
            arr = arr.astype(f.dtype, copy=False)
            if f.transform is not None:
                arr = f.transform(arr, seq)
            if f.flip is not None and flipped.any():
                arr = arr.copy()
                arr[flipped] = f.flip.apply(arr[flipped])
            out[name] = torch.from_numpy(np.ascontiguousarray(arr))
        out["seq"] = torch.from_numpy(seq)
        out["target_frames"] = torch.from_numpy(targets)
        out["target_valid"] = torch.from_numpy(valid)
        out["flipped"] = torch.from_numpy(flipped)
        return out

    def _read_window(self, f: Field, sid: str, frames: np.ndarray) -> np.ndarray:
        if sid in self._sel:
            sl = self._sel[sid]
            frames = (sl.start or 0) + frames * (sl.step or 1)
        lo, hi = int(frames.min()), int(frames.max()) + 1
        block = f.cache.read(sid, f.field, lo, hi)  # one contiguous HDF5 read per window
        _check_finite(f, sid, block, lo)
        return block[frames - lo]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.get_batch([i])
        return {k: v[0] for k, v in b.items()}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        # torch's DataLoader calls this with a whole batch of indices; pair it with
        # ``collate_fn=lambda b: b`` to skip per-item collation.
        return self.get_batch(idx)
