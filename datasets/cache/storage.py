"""How per-sequence arrays are laid out on disk (chosen by benchmarks/bench_cache_layout.py).

Measured on the 2-core CI machine (docs/benchmarks.md): contiguous, uncompressed datasets
give the fastest random window reads for 2048-d features and cost nothing to write, while
chunking and compression only add decode work. Sequences are written whole, so nothing
needs to be appendable in the final file; appendable (chunked) datasets are used only
inside the per-sequence part files of long streams, and re-laid out contiguously when
the cache is finalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

__all__ = ["StoragePolicy", "DEFAULT_POLICY", "COPY_SLAB_ROWS"]

COPY_SLAB_ROWS = 4096  # rows per read/write when copying, bounds memory for huge sequences


@dataclass(frozen=True)
class StoragePolicy:
    """``chunk_rows=None`` stores contiguous datasets; otherwise chunks of that many frames.
    ``compression`` ('gzip', 'lzf' or None) applies only to chunked datasets."""

    chunk_rows: int | None = None
    compression: str | None = None

    def _kwargs(self, shape: tuple[int, ...]) -> dict:
        if self.chunk_rows is None or shape[0] == 0:
            return {}
        kw: dict = {"chunks": (min(self.chunk_rows, shape[0]),) + tuple(shape[1:])}
        if self.compression:
            kw["compression"] = self.compression
        return kw

    def create(self, group: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
        return group.create_dataset(name, data=arr, **self._kwargs(arr.shape))

    def copy(self, src: h5py.Dataset, group: h5py.Group, name: str) -> h5py.Dataset:
        """Copy ``src`` into ``group[name]`` re-laid out with this policy, in bounded slabs."""
        dst = group.create_dataset(name, shape=src.shape, dtype=src.dtype, **self._kwargs(src.shape))
        if src.ndim == 0:
            dst[()] = src[()]
            return dst
        for s in range(0, src.shape[0], COPY_SLAB_ROWS):
            dst[s:s + COPY_SLAB_ROWS] = src[s:s + COPY_SLAB_ROWS]
        dst.attrs.update(dict(src.attrs))
        return dst


DEFAULT_POLICY = StoragePolicy()
