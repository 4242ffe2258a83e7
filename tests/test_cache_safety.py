"""Caches that cannot lie (issue 9, writer side): one writer per cache, commits that re-check
their rows, verify that names the field, disk full without noise, corrupt files named."""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from poselift.datasets.cache import Cache, CacheError, CacheHeader, CacheWriter
from poselift.datasets.cache.cli import main as cache_cli
from poselift.datasets.cache.lock import CacheLockedError
from poselift.datasets.cache.verify import verify_cache


def fheader(dim: int = 8, **kw) -> CacheHeader:
    base = dict(kind="features", dataset="unit",
                source={"extractor": "test", "weights_sha256": "0" * 64, "feature_dim": dim},
                inputs_fingerprint="inputs-1")
    base.update(kw)
    return CacheHeader(**base)


def feats(n: int, dim: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"features": rng.standard_normal((n, dim)).astype(np.float16),
            "frame_index": np.arange(n, dtype=np.int64), "valid": np.ones(n, bool)}


def test_second_writer_is_refused_naming_the_holder_and_cache_stays_intact(tmp_path):
    p = tmp_path / "c.h5"
    w1 = CacheWriter(p, fheader())
    w1.write_sequence("a", feats(10))
    st = w1.begin_sequence("b")
    st.append(feats(6, seed=1))  # the first writer is mid-sequence when the second one starts
    for kw in ({}, {"overwrite": True}):
        with pytest.raises(CacheLockedError, match=rf"c\.h5: another writer holds .*c\.h5\.lock "
                                                   rf"\(host {socket.gethostname()}, pid {os.getpid()}, "
                                                   rf"started 20\d\d-"):
            CacheWriter(p, fheader(dim=8 if not kw else 4), **kw)
    assert (tmp_path / "c.h5.partial").is_dir(), "the refused --overwrite deleted nothing"
    st.append(feats(4, seed=2))
    st.commit()
    w1.finalize()
    w1.close()
    c = Cache(p)
    assert c.ids == ["a", "b"] and len(c.read("b", "features")) == 10
    assert c.read("b", "valid").all() and verify_cache(p).ok
    assert not (tmp_path / "c.h5.lock").exists()
    CacheWriter(p, fheader()).close()  # released: the next writer gets in


HOLD = textwrap.dedent("""
    import sys, time
    from poselift.datasets.cache import CacheWriter, CacheHeader
    w = CacheWriter(sys.argv[1], CacheHeader(kind="features", dataset="unit", inputs_fingerprint="x"))
    print("locked", flush=True)
    time.sleep(60)
""")


def test_lock_of_a_killed_writer_is_released_by_the_os(tmp_path):
    p = tmp_path / "c.h5"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(p)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=f"pid {proc.pid}"):
            CacheWriter(p, CacheHeader(kind="features", dataset="unit", inputs_fingerprint="x"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "c.h5.lock").exists()  # the file survives kill -9, the lock does not
    with CacheWriter(p, CacheHeader(kind="features", dataset="unit", inputs_fingerprint="x")) as w:
        w.write_sequence("a", feats(3))
    assert Cache(p).ids == ["a"]


def test_temporary_names_are_unique_per_stream(tmp_path):
    with CacheWriter(tmp_path / "c.h5", fheader()) as w:
        s1, s2 = w.begin_sequence("x"), w.begin_sequence("x")
        assert s1.tmp != s2.tmp and s1.tmp.parent == s2.tmp.parent
        s2.abort()
        s1.append(feats(3))
        s1.commit()
    assert Cache(tmp_path / "c.h5").ids == ["x"]


def test_commit_refuses_rows_changed_behind_the_stream(tmp_path):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, fheader())
    st = w.begin_sequence("s")
    st.append(feats(8))
    st.append(feats(8, seed=1))
    st._g["features"][3:7] = 0  # what a second writer sharing the part file used to do
    st._g["valid"][3:7] = False
    with pytest.raises(CacheError, match=r"c\.h5: sequence 's', field 'features': stored rows differ"):
        st.commit()
    assert not w.has("s") and not list((tmp_path / "c.h5.partial").glob("*.tmp"))
    st = w.begin_sequence("s")
    st.append(feats(8))
    st._g["frame_index"].resize(5, axis=0)  # rows lost
    with pytest.raises(CacheError, match=r"field 'frame_index': 5 rows stored, 8 appended"):
        st.commit()
    w.close()


def test_writer_refuses_features_wider_than_the_header(tmp_path):
    with CacheWriter(tmp_path / "c.h5", fheader(dim=16)) as w:
        with pytest.raises(CacheError, match=r"sequence 'a', field 'features': width 8, but the "
                                             r"header's source.feature_dim is 16"):
            w.write_sequence("a", feats(4))
        st = w.begin_sequence("b")
        with pytest.raises(CacheError, match="width 8"):
            st.append(feats(4))
        st.abort()


def _finalised(tmp_path, n=3):
    p = tmp_path / "c.h5"
    with CacheWriter(p, fheader()) as w:
        for i in range(n):
            w.write_sequence(f"s{i}", feats(20, seed=i))
    return p


def test_verify_names_sequence_and_field_of_zeroed_rows(tmp_path, capsys):
    p = _finalised(tmp_path)
    with h5py.File(p, "a") as f:
        f["sequences/s1/features"][5:9] = 0
    r = verify_cache(p)
    assert not r.ok
    assert any("sequence 's1', field 'features': stored data differs from its sha256" in m
               for m in r.problems), r.problems
    assert not any("'s0'" in m or "'s2'" in m for m in r.problems)
    assert cache_cli(["verify", str(p)]) == 1
    assert "field 'features'" in capsys.readouterr().out


def test_verify_checks_header_against_stored_shapes(tmp_path):
    p = _finalised(tmp_path)
    import json

    with h5py.File(p, "a") as f:
        src = json.loads(f.attrs["source"])
        f.attrs["source"] = json.dumps({**src, "feature_dim": 1024})
    r = verify_cache(p)
    assert not r.ok and sum("field 'features': width 8, but the header's source.feature_dim is 1024"
                            in m for m in r.problems) == 3, r.problems


def test_verify_deep_rereads_parts_and_checks_frame_order(tmp_path):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, fheader())
    w.write_sequence("a", feats(10))
    w.write_sequence("b", feats(10, seed=1))
    w.close()  # interrupted: the parts wait in c.h5.partial
    part = next(q for q in (tmp_path / "c.h5.partial").glob("seq-*.h5")
                if h5py.File(q, "r")["sequences"].get("b") is not None)
    with h5py.File(part, "a") as f:
        f["sequences/b/frame_index"][4] = 0
    shallow, deep = verify_cache(p), verify_cache(p, deep=True)
    assert not any("'b'" in m for m in shallow.problems)
    msgs = [m for m in deep.problems if "'b'" in m]
    assert any("field 'frame_index': stored data differs" in m for m in msgs), deep.problems
    assert any("field 'frame_index': not increasing at row 4" in m for m in msgs), deep.problems
    assert not any("'a'" in m for m in deep.problems)


def test_truncated_existing_cache_is_named(tmp_path):
    p = _finalised(tmp_path)
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CacheError, match=r"c\.h5: the existing cache is not a readable HDF5 file.*"
                                         r"truncated or corrupt"):
        CacheWriter(p, fheader())
    CacheWriter(p, fheader(), overwrite=True).close()  # and the lock was released


def test_disk_full_mid_sequence_stops_cleanly_and_resumes(tmp_path, monkeypatch):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, fheader())
    w.write_sequence("a", feats(10))
    st = w.begin_sequence("b")
    st.append(feats(5))
    real = h5py.Dataset.__setitem__

    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    with pytest.raises(CacheError, match=r"c\.h5: no space left on the device \([\d.]+ MiB free; "
                                         r"finishing needs at least [\d.]+ MiB"):
        st.append(feats(5))
    monkeypatch.setattr(h5py.Dataset, "__setitem__", real)
    assert not list((tmp_path / "c.h5.partial").glob("*.tmp")) and st._f is None
    w.close()
    with CacheWriter(p, fheader()) as w2:  # space freed: resume
        assert w2.done() == {"a"}
        w2.write_sequence("b", feats(10, seed=1))
    assert Cache(p).ids == ["a", "b"] and verify_cache(p).ok


FILL = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from poselift.datasets.cache import CacheWriter, CacheHeader, CacheError
    hdr = CacheHeader(kind="features", dataset="unit", inputs_fingerprint="x")
    try:
        with CacheWriter(sys.argv[1], hdr) as w:
            if not w.has("small"):
                w.write_sequence("small", {"features": np.ones((4, 8), np.float16)})
            if sys.argv[2] == "limit":
                # Files may not grow past 256 KiB from here on: writes fail like on a full disk.
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
            st = w.begin_sequence("big")
            for i in range(64):
                st.append({"features": np.full((64, 512), i, np.float16)})
            st.commit()
    except CacheError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
""")


def test_real_write_failure_mid_sequence_gives_one_line_and_no_crash(tmp_path):
    p = tmp_path / "c.h5"
    r = subprocess.run([sys.executable, "-c", FILL, str(p), "limit"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Exception ignored" not in r.stderr, r.stderr[-2000:]
    assert f"{p}: the file-size limit (ulimit -f) was reached" in lines[0]
    assert "committed sequences are kept in" in lines[0]
    r = subprocess.run([sys.executable, "-c", FILL, str(p), "free"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    c = Cache(p)
    assert c.ids == ["big", "small"] and len(c.read("big", "features")) == 64 * 64
    assert verify_cache(p).ok


def test_real_disk_full_on_a_small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE test covers the same path)")
    try:
        p = mnt / "c.h5"
        r = subprocess.run([sys.executable, "-c", FILL, str(p), "free"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert f"{p}: no space left on the device" in r.stderr
        assert not list((mnt / "c.h5.partial").glob("*.tmp"))
        with CacheWriter(p, CacheHeader(kind="features", dataset="unit", inputs_fingerprint="x")) as w:
            assert w.done() == {"small"}  # committed before the disk filled
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_merge_into_a_cache_being_written_is_refused(tmp_path):
    from poselift.datasets.cache.merge import merge_caches

    shard = _finalised(tmp_path)
    out = tmp_path / "out.h5"
    w = CacheWriter(out, fheader())
    try:
        with pytest.raises(CacheLockedError, match=r"out\.h5: another writer holds"):
            merge_caches(out, [shard])
    finally:
        w.close()
    assert merge_caches(out, [shard]).sequences == 3 and verify_cache(out).ok


def test_a_forked_child_does_not_release_the_parents_lock(tmp_path):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, fheader())
    pid = os.fork()
    if pid == 0:  # e.g. a DataLoader worker that inherited the writer and exits
        w._lock.release()
        os._exit(0)
    os.waitpid(pid, 0)
    assert (tmp_path / "c.h5.lock").exists()
    with pytest.raises(CacheLockedError):
        CacheWriter(p, fheader())
    w.close()
