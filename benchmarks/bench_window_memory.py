"""Resident memory of CacheWindowDataset must not grow with cache size.

Writes a features cache of N frames x 2048 (float16; 1 M frames = 3.9 GiB) once, then for
growing prefixes of it (by sequence count) builds the dataset and streams random 16-frame
windows, recording windows/s and the process's peak and current RSS.

    .venv/bin/python benchmarks/bench_window_memory.py --frames 1000000 --out bench_out
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

from poselift.datasets.cache import Cache, CacheHeader, CacheWriter
from poselift.datasets.window_dataset import CacheWindowDataset, Field
from poselift.datasets.windows import make_windows, segments_from_lengths


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(path: Path, frames: int, seq_len: int) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(0)
    block = rng.gamma(0.6, 0.8, size=(seq_len, 2048)).astype(np.float16)
    with CacheWriter(path, CacheHeader(kind="features", dataset="bench-memory")) as w:
        for i in range(frames // seq_len):
            block[0, 0] = i  # distinct content per sequence, without generating 4 GB of randoms
            w.write_sequence(f"v{i:06d}", {"features": block})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=1_000_000, help="frames in the features cache (default 1 M = 3.8 GiB)")
    p.add_argument("--seq-len", type=int, default=1000, help="frames per sequence (default 1000)")
    p.add_argument("--windows", type=int, default=20000, help="windows read per measurement")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for the cache file")
    p.add_argument("--keep", action="store_true", help="keep the cache file afterwards")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"features_{a.frames}.h5"
    t = time.perf_counter()
    build(path, a.frames, a.seq_len)
    print(f"# window-memory benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; cache "
          f"{path.stat().st_size / 2**30:.2f} GiB built in {time.perf_counter() - t:.0f} s; "
          f"RSS before reading {rss_mib():.0f} MiB")
    print("| sequences used | frames | cache GiB covered | window index MiB | windows/s | RSS MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    cache = Cache(path)
    ids_all = cache.ids
    rng = np.random.default_rng(0)
    for frac in (0.01, 0.1, 0.5, 1.0):
        ids = ids_all[: max(1, int(len(ids_all) * frac))]
        lengths = [cache.info(s).n_frames for s in ids]
        w = make_windows(segments_from_lengths(lengths), left=8, right=7, stride=1, pad="none")
        ds = CacheWindowDataset({"features": Field(cache, "features", dtype=np.float32)}, ids, w)
        idx = rng.integers(0, len(ds), a.windows)
        t = time.perf_counter()
        for b in range(0, len(idx), 32):
            ds.get_batch(idx[b:b + 32])
        rate = len(idx) / (time.perf_counter() - t)
        n_frames = sum(lengths)
        index = sum(getattr(w, k).nbytes for k in ("seq", "target_start", "seg_start", "seg_stop"))
        print(f"| {len(ids)} | {n_frames} | {n_frames * 4096 / 2**30:.2f} | {index / 2**20:.1f} | {rate:.0f} | "
              f"{rss_mib():.0f} | {peak_mib():.0f} |", flush=True)
    if not a.keep:
        path.unlink()


if __name__ == "__main__":
    main()
