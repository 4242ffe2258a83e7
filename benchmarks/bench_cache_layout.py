"""Choose the cache's dtype / chunking / compression: write MB/s, file size, random 16- and
243-frame window reads per second, cold (page cache dropped for the file) and warm.

    .venv/bin/python benchmarks/bench_cache_layout.py --frames 120000 --out bench_out

Prints a markdown table (paste into docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from poselift.datasets.cache import CacheHeader, CacheWriter, StoragePolicy

VARIANTS = {
    "f16 contiguous": (np.float16, StoragePolicy()),
    "f32 contiguous": (np.float32, StoragePolicy()),
    "f16 chunk 64": (np.float16, StoragePolicy(chunk_rows=64)),
    "f16 chunk 256": (np.float16, StoragePolicy(chunk_rows=256)),
    "f16 chunk 64 lzf": (np.float16, StoragePolicy(chunk_rows=64, compression="lzf")),
    "f16 chunk 64 gzip": (np.float16, StoragePolicy(chunk_rows=64, compression="gzip")),
}


def drop_cache(path: Path) -> None:
    """Evict a file's pages (works without root for clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_POOL = np.random.default_rng(0).gamma(0.6, 0.8, size=(4096, 2048)).astype(np.float32)


def features(rng: np.random.Generator, n: int) -> np.ndarray:
    """ResNet avg-pooled features are non-negative and dense; a gamma mimics their spread.
    Rows come from a precomputed pool so random generation does not pollute write timings."""
    return _POOL[rng.integers(0, len(_POOL), n)]


def write(path: Path, dtype, policy: StoragePolicy, lengths: list[int]) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    hdr = CacheHeader(kind="features", dataset="bench")
    w = CacheWriter(path, hdr, policy=policy, overwrite=True)
    data = [features(rng, n).astype(dtype) for n in lengths]
    t = time.perf_counter()
    for i, x in enumerate(data):
        w.write_sequence(f"seq{i:05d}", {"features": x})
    t_parts = time.perf_counter() - t
    t = time.perf_counter()
    w.finalize()
    return t_parts, time.perf_counter() - t


def read_windows(path: Path, lengths: list[int], size: int, n: int, cold: bool) -> float:
    rng = np.random.default_rng(1)
    seqs = rng.integers(0, len(lengths), n)
    if cold:
        drop_cache(path)
    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        g = f["sequences"]
        handles = {}
        for s in seqs:
            d = handles.get(s)
            if d is None:
                d = handles[s] = g[f"seq{s:05d}"]["features"]
            start = int(rng.integers(0, max(lengths[s] - size, 0) + 1))
            # what CacheWindowDataset does: read, then convert with torch into a numpy buffer
            x = d[start:start + size]
            torch.from_numpy(np.empty(x.shape, np.float32)).copy_(torch.from_numpy(x))
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=120_000, help="total frames per variant")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="scratch folder (removed afterwards)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lengths, total = [], 0
    while total < a.frames:  # sequence lengths like video clips: 300-1500 frames
        n = int(rng.integers(300, 1500))
        lengths.append(n)
        total += n
    print(f"# cache layout benchmark: {len(lengths)} sequences, {total} frames x 2048, "
          f"{platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| layout | write MB/s (parts) | finalize s | file MB | 16f win/s cold | 16f warm | 243f cold | 243f warm |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.variants.split(","):
        dtype, policy = VARIANTS[name]
        path = a.out / f"layout_{name.replace(' ', '_')}.h5"
        t_parts, t_fin = write(path, dtype, policy, lengths)
        mb = total * 2048 * np.dtype(dtype).itemsize / 2**20
        size = path.stat().st_size / 2**20
        r16c = read_windows(path, lengths, 16, 3000, cold=True)
        r16w = read_windows(path, lengths, 16, 3000, cold=False)
        r243c = read_windows(path, lengths, 243, 500, cold=True)
        r243w = read_windows(path, lengths, 243, 500, cold=False)
        print(f"| {name} | {mb / t_parts:.0f} | {t_fin:.1f} | {size:.0f} | {r16c:.0f} | {r16w:.0f} | "
              f"{r243c:.0f} | {r243w:.0f} |", flush=True)
        path.unlink()
    shutil.rmtree(a.out, ignore_errors=True)


if __name__ == "__main__":
    main()
