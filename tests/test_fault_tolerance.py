"""Sharded extraction under torchrun: balanced sharding, merge rules, SIGKILL of a rank / the whole
job at random points, resume, and disk-full reporting. The final merged cache must equal an
uninterrupted run's: same ids, same content fingerprint, verify_cache ok."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from poselift.datasets.cache import Cache, CacheError, CacheHeader, CacheMismatchError, CacheWriter
from poselift.datasets.cache.merge import merge_caches
from poselift.datasets.cache.verify import verify_cache
from poselift.extract.distributed_cli import main as dist_main
from poselift.extract.sharding import balance_by_frames, rank_from_env, shard_path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
W, H = 48, 40
LENGTHS = [70, 64, 60, 56, 52, 48, 44, 40, 36, 30]


def _video(path: Path, n: int, seed: int) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    assert w.isOpened()
    for i in range(n):
        f = np.full((H, W, 3), (20 + seed * 9, 60 + 3 * i, 100), np.uint8)
        f[8:30, (i + seed) % 30:(i + seed) % 30 + 10] = (0, 0, 255)
        w.write(f)
    w.release()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    entries = []
    for k, n in enumerate(LENGTHS):
        _video(d / f"v{k}.mp4", n, k)
        boxes = np.array([[(i + k) % 30, 8, (i + k) % 30 + 10, 30] for i in range(n)], np.float32)
        np.save(d / f"b{k}.npy", boxes)
        entries.append({"seq_id": f"S{k % 3}/act{k}", "source": f"v{k}.mp4", "boxes": f"b{k}.npy",
                        "box_format": "xyxy", "attrs": {"subject": f"S{k % 3}"}})
    (d / "m.json").write_text(json.dumps(entries))
    return d / "m.json"


def _args(manifest: Path, out: Path) -> list[str]:
    return [str(out), "--manifest", str(manifest), "--random-init", "--base-width", "32",
            "--crop-size", "64", "--backbone", "resnet50", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", "--threads", "1", "--no-progress", "--dataset", "ft"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS")}
    env.update(OMP_NUM_THREADS="1", PYTHONSAFEPATH="1", PYTHONWARNINGS="ignore")
    return env


def _launch(manifest: Path, out: Path) -> subprocess.Popen:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m",
           "poselift.extract.distributed_cli"] + _args(manifest, out)
    return subprocess.Popen(cmd, cwd=out.parent, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rank_pids(pid: int) -> dict[int, int]:
    found = {}
    for c in _children(pid):
        try:
            env = Path(f"/proc/{c}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                found[int(kv[5:])] = c
    return found


def _n_done(out: Path) -> int:
    """Sequences committed so far: parts of running shards + sequences of finalised shards."""
    n = 0
    for r in (0, 1):
        shard = shard_path(out, r, 2)
        parts = list(shard.parent.glob(shard.name + ".partial/seq-*.h5"))
        if parts or not shard.exists():
            n += len(parts)
        else:
            try:
                n += len(Cache(shard))
            except CacheError:  # being replaced right now
                pass
    return n


def _reference(manifest: Path, tmp: Path, monkeypatch) -> Cache:
    """Uninterrupted single-process run of the same command (no torchrun)."""
    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    ref = tmp / "ref" / "feats.h5"
    ref.parent.mkdir()
    assert dist_main(_args(manifest, ref)) == 0
    return Cache(ref)


def test_rank_env_and_balance():
    assert rank_from_env({}).world_size == 1
    r = rank_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (r.rank, r.world_size, r.local_rank, r.launcher) == (3, 4, 1, "torchrun")
    s = rank_from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "64", "SLURM_LOCALID": "1"})
    assert (s.rank, s.world_size, s.launcher) == (5, 64, "slurm")
    with pytest.raises(ValueError, match="rank 4 of world size 4"):
        rank_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    bins = balance_by_frames(LENGTHS, 2)
    assert sorted(sum(bins, [])) == list(range(len(LENGTHS)))  # disjoint and complete
    loads = [sum(LENGTHS[i] for i in b) for b in bins]
    assert loads == [248, 252]  # LPT: 70,56,48,44,30 | 64,60,52,40,36
    assert balance_by_frames(LENGTHS, 2) == bins  # deterministic
    assert balance_by_frames([5, 5, 5], 4)[3] == []
    assert shard_path("/x/f.h5", 1, 8).name == "f.h5.shard-1-of-8.h5"


def _tiny_cache(path: Path, seqs: dict[str, float], fp: str = "in") -> Path:
    hdr = CacheHeader(kind="features", dataset="d", source={"extractor": "x"}, inputs_fingerprint=fp)
    with CacheWriter(path, hdr) as w:
        for sid, v in seqs.items():
            w.write_sequence(sid, {"features": np.full((4, 3), v, np.float16)})
    return path


def test_merge_unions_checks_identity_and_duplicates(tmp_path):
    a = _tiny_cache(tmp_path / "a.h5", {"s1": 1, "s2": 2})
    b = _tiny_cache(tmp_path / "b.h5", {"s2": 2, "s3": 3})
    single = Cache(_tiny_cache(tmp_path / "all.h5", {"s1": 1, "s2": 2, "s3": 3}))
    r = merge_caches(tmp_path / "m.h5", [a, b])
    m = Cache(r.path)
    assert m.ids == ["s1", "s2", "s3"] and r.duplicates == 1
    assert m.content_fingerprint == single.content_fingerprint == r.content_fingerprint
    assert m.header.identity() == single.header.identity()
    assert verify_cache(r.path).ok
    c = _tiny_cache(tmp_path / "c.h5", {"s3": 9})
    with pytest.raises(CacheError, match=r"c\.h5: sequence 's3' differs from the copy in .*b\.h5"):
        merge_caches(tmp_path / "m.h5", [a, b, c])
    assert Cache(tmp_path / "m.h5").ids == ["s1", "s2", "s3"]  # failed merge left the old output
    other = _tiny_cache(tmp_path / "o.h5", {"s4": 4}, fp="other")
    with pytest.raises(CacheMismatchError, match=r"o\.h5: cannot be merged .*inputs_fingerprint"):
        merge_caches(tmp_path / "m2.h5", [a, other])
    with pytest.raises(CacheError, match=r"nope\.h5: no such cache file"):
        merge_caches(tmp_path / "m3.h5", [a, tmp_path / "nope.h5"])
    r2 = merge_caches(tmp_path / "m.h5", [tmp_path / "m.h5", _tiny_cache(tmp_path / "d.h5", {"s5": 5})],
                      remove_inputs=True)
    assert Cache(r2.path).ids == ["s1", "s2", "s3", "s5"] and not (tmp_path / "d.h5").exists()


def test_sigkill_ranks_and_job_then_resume_equals_uninterrupted(manifest, tmp_path, monkeypatch):
    ref = _reference(manifest, tmp_path, monkeypatch)
    assert len(ref) == len(LENGTHS)
    out = tmp_path / "job" / "feats.h5"
    out.parent.mkdir()
    rnd = random.Random(1234)
    # Kill rank 1, rank 0, then the whole job (torchrun + both ranks), each after a random number of
    # committed sequences, i.e. mid-extraction of a later one.
    kills = []
    for victim in (1, 0, "job"):
        proc = _launch(manifest, out)
        target = min(_n_done(out) + rnd.randint(1, 2), len(LENGTHS) - 3)
        deadline = time.monotonic() + 40
        while ((_n_done(out) < target or len(_rank_pids(proc.pid)) < 2)
               and proc.poll() is None and time.monotonic() < deadline):
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 0.15))
        if proc.poll() is None:
            if victim == "job":  # the agent and every rank (torchrun starts ranks in new sessions)
                ranks = list(_rank_pids(proc.pid).values())
                os.killpg(proc.pid, signal.SIGKILL)
                for pid in ranks:
                    os.kill(pid, signal.SIGKILL)
            else:
                pid = _rank_pids(proc.pid).get(victim)
                if pid:
                    os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        kills.append((victim, proc.returncode, target))
        assert not out.exists(), f"killed run {victim} still finished: choose later kill points"
    assert all(rc != 0 for _, rc, _ in kills), kills
    assert _n_done(out) >= 3  # committed work survived the kills
    proc = _launch(manifest, out)
    log, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, log
    assert "merged 2 shard(s)" in log
    got = Cache(out)
    assert got.ids == ref.ids
    assert got.content_fingerprint == ref.content_fingerprint  # no lost/duplicated/half sequence
    assert got.header.identity() == ref.header.identity()  # one provenance record
    v = verify_cache(out)
    assert v.ok and v.sequences == len(LENGTHS) and not v.warnings, v.to_dict()
    assert not list(out.parent.glob("*.shard-*")), "shards and their part folders are removed"
    # Re-running a finished job writes nothing new and keeps the content.
    assert dist_main(_args(manifest, out)) == 0
    assert Cache(out).content_fingerprint == ref.content_fingerprint


def test_disk_full_is_reported_and_committed_work_kept(manifest, tmp_path, monkeypatch, capsys, caplog):
    import errno

    from poselift.datasets.cache import writer as writer_mod

    real = writer_mod._fsync_path
    calls = {"n": 0}

    def full_after_three(p):
        calls["n"] += 1
        if calls["n"] > 3 and str(p).endswith(".tmp") and ".partial" in str(p):
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        real(p)

    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(writer_mod, "_fsync_path", full_after_three)
    out = tmp_path / "full.h5"
    # extract_features treats a failed commit as a failed sequence: the run goes on, lists every
    # sequence that hit the full disk, and finalises what was committed before.
    assert dist_main(_args(manifest, out)) == 1
    err = capsys.readouterr().err + caplog.text  # one log line per failed sequence
    assert len(re.findall(r"sequence '[^']+' failed: ", err)) == len(LENGTHS) - 3
    assert "full.h5: no space left on the device" in err and "re-run the same command" in err
    assert len(Cache(out)) == 3 and verify_cache(out).ok
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "full.h5.partial").exists()
    monkeypatch.setattr(writer_mod, "_fsync_path", real)
    assert dist_main(_args(manifest, out)) == 0
    assert len(Cache(out)) == len(LENGTHS) and verify_cache(out).ok
