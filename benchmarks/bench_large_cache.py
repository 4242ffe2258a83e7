"""Caches larger than RAM: build a synthetic features cache, stream windows, show RSS stays bounded.

Build: N frames x 2048 float16 in sequences of ``--seq-len`` frames, written straight in the final
cache layout (valid header, per-sequence digests, content fingerprint: ``poselift-cache verify``
accepts it); going through CacheWriter would write every byte twice (part files + finalize), which
the disk may not hold at 10 M frames. The size is capped by free disk space (at most 45 % of it).

Stream: training-style (random 16-frame windows, batch 32, the ``CacheWindowDataset`` used by
TCMR training) and evaluation-style (every frame once, 243-frame windows in sequence order).
Reports windows/s, MB/s and peak RSS (VmHWM) after each phase; RSS must not grow with the cache.

    # what the lead runs (10 M frames ~ 39 GiB; several minutes to build):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_large_cache.py --frames 10000000 \
        --out /work/bench/large_features.h5 --seconds 60
    # smoke test:
    .venv/bin/python benchmarks/bench_large_cache.py --frames 20000 --out /tmp/lc.h5 --seconds 3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

D = 2048


def rss_mb(key: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(out: Path, frames: int, seq_len: int) -> dict:
    from poselift.datasets.cache import CacheHeader
    from poselift.datasets.cache.schema import SEQ_GROUP, content_fingerprint, group_name, sequence_digest

    hdr = CacheHeader(kind="features", dataset="synthetic-large",
                      source={"extractor": "synthetic", "weights_sha256": "none", "feature_dim": D},
                      inputs_fingerprint=hashlib.sha256(f"{frames}/{seq_len}".encode()).hexdigest())
    rng = np.random.default_rng(0)
    block = rng.standard_normal((seq_len, D)).astype(np.float16)  # re-used, rolled per sequence
    digests, t0, n = {}, time.perf_counter(), 0
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        g = f.create_group(SEQ_GROUP)
        k = 0
        while n < frames:
            t = min(seq_len, frames - n)
            sid = f"seq{k:07d}"
            feats = np.roll(block[:t], k, axis=1)
            arrays = {"features": feats, "frame_index": np.arange(t, dtype=np.int64)}
            s = g.create_group(group_name(sid))
            for name, a in arrays.items():
                s.create_dataset(name, data=a)
            digests[sid] = sequence_digest(arrays)
            s.attrs.update({"seq_id": sid, "n_frames": t, "sha256": digests[sid], "complete": True})
            n, k = n + t, k + 1
        f.attrs.update(hdr.to_attrs())
        f.attrs["content_fingerprint"] = content_fingerprint(digests)
        f.attrs["num_sequences"] = len(digests)
    os.replace(tmp, out)
    sec = time.perf_counter() - t0
    return {"frames": n, "sequences": len(digests), "bytes": out.stat().st_size, "build_s": sec,
            "build_MBps": out.stat().st_size / 2**20 / sec}


def stream(path: Path, seconds: float, batch: int = 32) -> dict:
    from poselift.datasets.cache import Cache
    from poselift.datasets.window_dataset import CacheWindowDataset, Field
    from poselift.datasets.windows import make_windows

    c = Cache(path, kind="features")
    ids = c.ids
    segs = np.array([[i, 0, c.info(s).n_frames] for i, s in enumerate(ids)], np.int64)
    res = {"rss_after_open_MB": rss_mb("VmRSS")}
    for name, kw, order in (("train_16f", dict(left=8, right=7, stride=1, pad="none", min_length=16), "random"),
                            ("eval_243f", dict(left=121, right=121, stride=1, pad="edge"), "sequential")):
        w = make_windows(segs, n_targets=1, **kw)
        ds = CacheWindowDataset({"x": Field(c, "features", "inputs")}, ids, w)
        rng = np.random.default_rng(1)
        t0, n, samples = time.perf_counter(), 0, []
        pos = 0
        while time.perf_counter() - t0 < seconds:
            if order == "random":
                idx = rng.integers(0, len(w), batch)
            else:  # evaluation: consecutive windows, through the whole cache in order
                idx = (pos + np.arange(batch)) % len(w)
                pos += batch
            b = ds.get_batch(idx)
            n += len(idx)
            if len(samples) < 200 and n % (batch * 50) == 0:
                # anonymous (heap) vs file-backed resident pages, MB
                samples.append((round(rss_mb("RssAnon")), round(rss_mb("RssFile"))))
        sec = time.perf_counter() - t0
        T = b["x"].shape[1]
        res[name] = {"windows": len(w), "windows_per_s": n / sec,
                     "MB_per_s": n * T * D * 2 / 2**20 / sec, "rss_anon_file_samples_MB": samples[::20],
                     "peak_rss_MB": rss_mb("VmHWM")}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10_000_000, help="frames to build (capped at 45 %% of free disk)")
    p.add_argument("--seq-len", type=int, default=2000, help="frames per sequence (default 2000)")
    p.add_argument("--out", type=Path, default=Path("large_features.h5"), help="the cache file to build")
    p.add_argument("--seconds", type=float, default=30.0, help="per streaming phase")
    p.add_argument("--reuse", action="store_true", help="stream an existing --out without rebuilding")
    p.add_argument("--keep", action="store_true", help="keep the file afterwards")
    a = p.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(a.out.parent).free
    cap = int(free * 0.45 / (D * 2))
    frames = min(a.frames, cap)
    if frames < a.frames:
        print(f"disk: {free / 2**30:.1f} GiB free -> {frames} frames instead of {a.frames}")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    report = {"ram_GiB": mem / 2**30, "disk_free_GiB": free / 2**30}
    if not (a.reuse and a.out.exists()):
        report["build"] = build(a.out, frames, a.seq_len)
        print(json.dumps(report["build"]))
    report["cache_GiB"] = a.out.stat().st_size / 2**30
    report["stream"] = stream(a.out, a.seconds)
    print(json.dumps(report, indent=2))
    if not a.keep:
        a.out.unlink()


if __name__ == "__main__":
    main()
