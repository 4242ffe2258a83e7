"""HDF5 cache v1: round trip, atomic commits, resume after a killed writer, verify, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from poselift.datasets.cache import (Cache, CacheError, CacheHeader, CacheMismatchError, CacheWriter,
                                     IncompleteCacheError, common_sequences)
from poselift.datasets.cache.cli import main as cache_cli
from poselift.datasets.cache.schema import sequence_digest
from poselift.datasets.cache.verify import cache_info, verify_cache


def header(**kw) -> CacheHeader:
    base = dict(kind="keypoints2d", dataset="unit", joint_set="h36m17",
                source={"extractor": "test", "weights_sha256": "0" * 64, "contract": {"crop": 224}},
                inputs_fingerprint="inputs-1")
    base.update(kw)
    return CacheHeader(**base)


def kp(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 500, (n, 17, 2)).astype(np.float32)


def test_round_trip_values_attrs_and_provenance(tmp_path):
    p = tmp_path / "c.h5"
    arrays = {"keypoints": kp(30), "scores": np.full((30, 17), 0.9, np.float32),
              "frame_index": np.arange(30, dtype=np.int64), "valid": np.ones(30, bool)}
    with CacheWriter(p, header()) as w:
        w.write_sequence("Train/S1/Walking 1 chunk0/cam0", arrays,
                         {"subject": "Train/S1", "action": "Walking 1 chunk0", "camera": "cam0", "fps": 60.0,
                          "image_size": [640, 480], "camera_params": {"res_w": 640}})
    c = Cache(p, kind="keypoints2d", joint_set="h36m17")
    assert c.ids == ["Train/S1/Walking 1 chunk0/cam0"]
    info = c.info(c.ids[0])
    assert (info.subject, info.action, info.camera, info.n_frames) == ("Train/S1", "Walking 1 chunk0", "cam0", 30)
    assert info.attrs["image_size"] == [640, 480] and info.attrs["camera_params"] == {"res_w": 640}
    np.testing.assert_array_equal(c.read(c.ids[0], "keypoints"), arrays["keypoints"])
    np.testing.assert_array_equal(c.read(c.ids[0], "keypoints", 5, 9), arrays["keypoints"][5:9])
    assert c.header.source["contract"] == {"crop": 224}
    with h5py.File(p, "r") as f:
        for key in ("schema", "schema_version", "poselift_version", "created", "content_fingerprint",
                    "inputs_fingerprint", "joint_set", "units", "source"):
            assert key in f.attrs, key
        assert json.loads(f.attrs["units"])["keypoints"] == "px"


def test_streamed_sequence_equals_whole_write(tmp_path):
    a = {"keypoints": kp(100, 1), "frame_index": np.arange(100, dtype=np.int64)}
    with CacheWriter(tmp_path / "whole.h5", header()) as w:
        w.write_sequence("s", a)
    with CacheWriter(tmp_path / "stream.h5", header()) as w:
        s = w.begin_sequence("s")
        for i in range(0, 100, 33):
            s.append({k: v[i:i + 33] for k, v in a.items()})
        s.commit()
    c1, c2 = Cache(tmp_path / "whole.h5"), Cache(tmp_path / "stream.h5")
    assert c1.content_fingerprint == c2.content_fingerprint
    assert c1.info("s").attrs["sha256"] == sequence_digest(a)
    np.testing.assert_array_equal(c2.read("s", "keypoints"), a["keypoints"])


def test_resume_skips_committed_sequences_and_header_must_match(tmp_path):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, header())
    w.write_sequence("a", {"keypoints": kp(5)})
    w.close()  # the process "dies" here: no finalize (its writer lock goes with it)
    with pytest.raises(IncompleteCacheError, match="did not finish.*1 committed"):
        Cache(p)
    with pytest.raises(CacheMismatchError, match="source"):
        CacheWriter(p, header(source={"extractor": "other"}))
    w2 = CacheWriter(p, header())
    assert w2.done() == {"a"} and w2.has("a")
    w2.write_sequence("b", {"keypoints": kp(6)})
    w2.finalize()
    w2.close()
    assert Cache(p).ids == ["a", "b"] and not (tmp_path / "c.h5.partial").exists()
    # adding to a finalised cache keeps what is there
    w3 = CacheWriter(p, header())
    w3.write_sequence("c", {"keypoints": kp(7)})
    w3.finalize()
    w3.close()
    assert Cache(p).ids == ["a", "b", "c"]
    with pytest.raises(CacheError, match="already written"):
        CacheWriter(p, header()).write_sequence("a", {"keypoints": kp(5)})


KILL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from poselift.datasets.cache import CacheWriter, CacheHeader
    N = 300
    hdr = CacheHeader(kind="features", dataset="unit", inputs_fingerprint="x")
    w = CacheWriter(sys.argv[1], hdr)
    i = 0
    while True:  # write until killed
        sid = f"seq{i:04d}"
        if not w.has(sid):
            w.write_sequence(sid, {"features": np.full((128, 1024), i, np.float16)})
            print(sid, flush=True)
        i += 1
        if i == N:
            w.finalize()
            print("done", flush=True)
            break
""")


def test_sigkill_mid_write_then_resume_gives_the_uninterrupted_result(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    killed = tmp_path / "killed.h5"
    rng = np.random.default_rng(0)
    interrupted = 0
    for attempt in range(4):  # kill at random moments, resume each time
        proc = subprocess.Popen([sys.executable, str(script), str(killed)], stdout=subprocess.PIPE,
                                text=True, cwd=tmp_path)
        proc.stdout.readline()  # it is writing now
        time.sleep(float(rng.uniform(0.0, 0.2)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        parts = tmp_path / "killed.h5.partial"
        if parts.exists() and not killed.exists():
            n_done = len(list(parts.glob("seq-*.h5")))
            assert 0 < n_done <= 300  # == 300: killed while finalising, also a valid moment
            interrupted += n_done < 300
            with pytest.raises(IncompleteCacheError):
                Cache(killed)
    assert interrupted >= 2, "the writer finished before it could be killed: test is not testing"
    subprocess.run([sys.executable, str(script), str(killed)], check=True, cwd=tmp_path,
                   capture_output=True)
    ref = tmp_path / "ref.h5"
    subprocess.run([sys.executable, str(script), str(ref)], check=True, cwd=tmp_path, capture_output=True)
    a, b = Cache(killed), Cache(ref)
    assert a.ids == b.ids == [f"seq{i:04d}" for i in range(300)]
    assert a.content_fingerprint == b.content_fingerprint
    assert verify_cache(killed).ok


def test_validation_errors_name_file_sequence_and_field(tmp_path):
    w = CacheWriter(tmp_path / "c.h5", header())
    bad = kp(4)
    bad[2, 3, 0] = np.nan
    with pytest.raises(CacheError, match=r"c\.h5.*sequence 'x'.*field 'keypoints'.*NaN.*frames \[2\]"):
        w.write_sequence("x", {"keypoints": bad})
    with pytest.raises(CacheError, match="15 joints, but the cache's joint set has 17"):
        w.write_sequence("x", {"keypoints": np.zeros((4, 15, 2), np.float32)})
    with pytest.raises(CacheError, match="zero frames"):
        w.write_sequence("x", {"keypoints": np.zeros((0, 17, 2), np.float32)})
    with pytest.raises(CacheError, match="'scores'.*expected 4 frames"):
        w.write_sequence("x", {"keypoints": kp(4), "scores": np.zeros((5, 17), np.float32)})
    with pytest.raises(CacheError, match="lacks required field"):
        w.write_sequence("x", {"scores": np.zeros((5, 17), np.float32)})
    assert w.done() == set()  # nothing half-written


def test_reader_refuses_mismatches_and_garbage(tmp_path):
    p = tmp_path / "c.h5"
    with CacheWriter(p, header()) as w:
        w.write_sequence("a", {"keypoints": kp(3)})
    with pytest.raises(CacheMismatchError, match="joint_set: file has 'h36m17', expected 'coco17'"):
        Cache(p, joint_set="coco17")
    with pytest.raises(CacheMismatchError, match="content_fingerprint"):
        Cache(p, content_fingerprint="deadbeef")
    with h5py.File(p, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheMismatchError, match="schema version 99"):
        Cache(p)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="junk.h5: not a readable HDF5 file"):
        Cache(junk)
    with pytest.raises(CacheError, match="no such cache file"):
        Cache(tmp_path / "missing.h5")


def test_verify_finds_corruption_truncation_and_wrong_dtype(tmp_path):
    p = tmp_path / "c.h5"
    with CacheWriter(p, header()) as w:
        for i in range(3):
            w.write_sequence(f"s{i}", {"keypoints": kp(8, i), "frame_index": np.arange(8)})
    assert verify_cache(p).ok
    with h5py.File(p, "r+") as f:  # silent edit after writing
        f["sequences/s1/keypoints"][0, 0, 0] += 1.0
        del f["sequences/s2/frame_index"]
        f["sequences/s2"].create_dataset("frame_index", data=np.arange(8, dtype=np.float32))
    r = verify_cache(p)
    assert not r.ok
    text = "\n".join(r.problems)
    assert "'s1': data digest differs" in text
    assert "'s2', field 'frame_index': dtype float32 not allowed" in text
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    rt = verify_cache(trunc)
    assert not rt.ok and "trunc.h5" in rt.problems[0]


def test_cli_info_verify_finalize(tmp_path, capsys):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, header())
    w.write_sequence("a", {"keypoints": kp(3)})
    assert cache_cli(["verify", str(p)]) == 1  # unfinalised: a problem
    assert cache_cli(["finalize", str(p)]) == 2  # the writer still holds the lock
    w.close()
    assert cache_cli(["finalize", str(p)]) == 0
    assert cache_cli(["verify", str(p)]) == 0
    assert cache_cli(["info", str(p), "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out[out.index("{"):])
    assert info["sequences"] == 1 and info["frames"] == 3 and info["fields"]["keypoints"]["per_frame_shape"] == [17, 2]
    assert cache_info(p)["source"]["extractor"] == "test"


def test_common_sequences_checks_lengths(tmp_path):
    with CacheWriter(tmp_path / "a.h5", header()) as w:
        w.write_sequence("x", {"keypoints": kp(5)})
        w.write_sequence("y", {"keypoints": kp(5)})
    with CacheWriter(tmp_path / "b.h5", header(kind="gt")) as w:
        w.write_sequence("x", {"joints_3d": np.zeros((6, 17, 3), np.float32)})
    with pytest.raises(CacheError, match="'x' has different frame counts"):
        common_sequences(Cache(tmp_path / "a.h5"), Cache(tmp_path / "b.h5"))


def test_disk_full_is_reported_and_keeps_committed_parts(tmp_path, monkeypatch):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, header())
    w.write_sequence("a", {"keypoints": kp(3)})
    import poselift.datasets.cache.writer as wmod

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wmod, "_fsync_path", full)
    with pytest.raises(CacheError, match="no space left.*committed sequences are kept"):
        w.write_sequence("b", {"keypoints": kp(3)})
    monkeypatch.undo()
    w.close()
    assert CacheWriter(p, header()).done() == {"a"}
    assert not list((tmp_path / "c.h5.partial").glob("*.tmp"))
    assert os.path.exists(tmp_path / "c.h5.partial" / "header.json")
