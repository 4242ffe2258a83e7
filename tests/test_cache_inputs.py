"""Per-input fingerprints (issue 9): a changed or fixed input re-extracts only its own
sequences, settings changes stay refusals, a second extraction on one cache exits 2."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache, CacheHeader, CacheMismatchError, CacheWriter
from poselift.datasets.cache.verify import verify_cache
from poselift.extract.backbones import ResNet
from poselift.extract.cli import main as cli_main
from poselift.extract.contracts import PreprocessContract
from poselift.extract.features import SequenceSpec, extract_features

torch.set_num_threads(1)
CONTRACT = PreprocessContract(crop_size=32, bbox_scale=1.2)


def hdr(prints: dict[str, str], **kw) -> CacheHeader:
    base = dict(kind="features", dataset="unit", source={"extractor": "t", "weights_sha256": "w1"},
                inputs_fingerprint="run-" + json.dumps(prints, sort_keys=True),
                input_fingerprints=prints)
    base.update(kw)
    return CacheHeader(**base)


def f(n: int, v: float) -> dict[str, np.ndarray]:
    return {"features": np.full((n, 4), v, np.float16)}


def test_changed_input_redoes_only_its_sequences_and_says_which(tmp_path, caplog):
    p = tmp_path / "c.h5"
    with CacheWriter(p, hdr({"a": "1", "b": "1", "vid": "1"})) as w:
        w.write_sequence("a", f(3, 1))
        w.write_sequence("b", f(3, 1))
        w.write_sequence("vid/track0", f(2, 1))
        w.write_sequence("vid/track1", f(2, 1))
    caplog.set_level(logging.WARNING)
    with CacheWriter(p, hdr({"a": "2", "b": "1", "vid": "2", "new": "1"})) as w:
        assert w.changed_inputs == ["a", "vid"] and w.done() == {"b"}
        w.write_sequence("a", f(5, 2))
        w.write_sequence("vid/track0", f(2, 2))
        w.write_sequence("new", f(1, 2))
    assert "input(s) changed since they were extracted: a, vid" in caplog.text
    c = Cache(p)
    assert c.ids == ["a", "b", "new", "vid/track0"]  # track1 of the old video is gone
    assert c.read("a", "features")[0, 0] == 2 and len(c.read("a", "features")) == 5
    assert c.read("b", "features")[0, 0] == 1
    assert c.header.input_fingerprints == {"a": "2", "b": "1", "vid": "2", "new": "1"}
    assert verify_cache(p).ok


def test_changed_input_in_an_interrupted_run_drops_its_part(tmp_path):
    p = tmp_path / "c.h5"
    w = CacheWriter(p, hdr({"a": "1", "b": "1"}))
    w.write_sequence("a", f(3, 1))
    w.write_sequence("b", f(3, 1))
    w.close()
    with CacheWriter(p, hdr({"a": "1", "b": "2"})) as w:
        assert w.done() == {"a"} and w.changed_inputs == ["b"]
        w.write_sequence("b", f(4, 3))
    assert Cache(p).read("b", "features").shape == (4, 4)


def test_settings_change_is_still_refused_naming_the_setting(tmp_path):
    p = tmp_path / "c.h5"
    with CacheWriter(p, hdr({"a": "1"})) as w:
        w.write_sequence("a", f(3, 1))
    with pytest.raises(CacheMismatchError, match=r"exists with different settings: source: .*'w2'.*"
                                                 r"--overwrite"):
        CacheWriter(p, hdr({"a": "2"}, source={"extractor": "t", "weights_sha256": "w2"}))
    old = tmp_path / "old.h5"  # a cache without per-input prints: any input change is refused
    with CacheWriter(old, hdr({}, inputs_fingerprint="x")) as w:
        w.write_sequence("a", f(3, 1))
    with pytest.raises(CacheMismatchError, match="inputs_fingerprint"):
        CacheWriter(old, hdr({"a": "1"}))


def write_video(path: Path, n: int) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (48, 40))
    for i in range(n):
        fr = np.full((40, 48, 3), (20, 60 + 4 * i, 100), np.uint8)
        fr[8:30, i % 30:i % 30 + 10] = (0, 0, 255)
        w.write(fr)
    w.release()
    return path


def boxes(n: int) -> np.ndarray:
    return np.array([[i % 30, 8, i % 30 + 10, 30] for i in range(n)], np.float32)


def test_fixed_zero_byte_video_resumes_without_overwrite(tmp_path, caplog):
    torch.manual_seed(0)
    m = ResNet(18, 4).eval()
    a = write_video(tmp_path / "a.mp4", 6)
    b = tmp_path / "b.mp4"
    b.write_bytes(b"")
    specs = [SequenceSpec("a", a, boxes(6)), SequenceSpec("b", b, boxes(5))]
    out = tmp_path / "f.h5"
    kw = dict(batch_size=4, weights_sha256="random-init:seed=0", progress=False)
    r = extract_features(specs, out, m, CONTRACT, **kw)
    assert r.written == ["a"] and list(r.failed) == ["b"]
    write_video(b, 5)  # the user fixes the broken input and runs the same command again
    caplog.set_level(logging.WARNING)
    r = extract_features(specs, out, m, CONTRACT, **kw)
    assert r.skipped == ["a"] and r.written == ["b"] and not r.failed
    assert "input(s) changed since they were extracted: b" in caplog.text
    assert Cache(out).ids == ["a", "b"] and verify_cache(out).ok


def test_second_extraction_on_one_cache_exits_2_naming_the_holder(tmp_path, capsys):
    write_video(tmp_path / "a.mp4", 4)
    np.save(tmp_path / "a_boxes.npy", boxes(4))
    (tmp_path / "m.json").write_text(json.dumps([{"seq_id": "a", "source": "a.mp4", "boxes": "a_boxes.npy"}]))
    out = tmp_path / "x.h5"
    holder = CacheWriter(out, CacheHeader(kind="features", dataset="custom"))
    try:
        rc = cli_main(["features", str(out), "--manifest", str(tmp_path / "m.json"), "--random-init",
                       "--base-width", "4", "--crop-size", "32", "--workers", "0",
                       "--no-progress"])
    finally:
        holder.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "x.h5: another writer holds" in err[0] and "pid" in err[0] and "started" in err[0]


def test_merge_takes_a_changed_input_from_the_newer_cache(tmp_path):
    from poselift.datasets.cache.merge import merge_caches

    old, new, out = tmp_path / "old.h5", tmp_path / "new.h5", tmp_path / "out.h5"
    with CacheWriter(old, hdr({"a": "1", "b": "1"})) as w:
        w.write_sequence("a", f(3, 1))
        w.write_sequence("b", f(3, 1))
    with CacheWriter(new, hdr({"a": "1", "b": "2"})) as w:  # a shard that re-did the fixed input b
        w.write_sequence("b", f(6, 2))
    m = merge_caches(out, [old, new])
    c = Cache(out)
    assert m.sequences == 2 and c.ids == ["a", "b"] and c.read("b", "features").shape == (6, 4)
    assert c.header.input_fingerprints == {"a": "1", "b": "2"} and verify_cache(out).ok
    with CacheWriter(tmp_path / "other.h5", hdr({"a": "1"}, source={"extractor": "t", "weights_sha256": "w9"})) as w:
        w.write_sequence("a", f(3, 1))
    with pytest.raises(CacheMismatchError, match="source"):
        merge_caches(tmp_path / "o2.h5", [old, tmp_path / "other.h5"])


def test_poselift_extract_dist_redoes_a_fixed_input(tmp_path, monkeypatch, capsys):
    from poselift.extract.distributed_cli import main as dist_main

    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    write_video(tmp_path / "a.mp4", 4)
    write_video(tmp_path / "b.mp4", 3)  # the first version of b: too short, replaced below
    for name, n in (("a", 4), ("b", 3)):
        np.save(tmp_path / f"{name}.npy", boxes(n))
    m = tmp_path / "m.json"
    m.write_text(json.dumps([{"seq_id": s, "source": f"{s}.mp4", "boxes": f"{s}.npy"} for s in "ab"]))
    out = tmp_path / "d.h5"
    args = [str(out), "--manifest", str(m), "--random-init", "--base-width", "4", "--crop-size", "32",
            "--workers", "0", "--device", "cpu", "--no-progress"]
    assert dist_main(args) == 0
    write_video(tmp_path / "b.mp4", 5)
    np.save(tmp_path / "b.npy", boxes(5))
    assert dist_main(args) == 0
    assert "wrote 1, skipped 1" in capsys.readouterr().out
    c = Cache(out)
    assert c.ids == ["a", "b"] and len(c.read("b", "features")) == 5 and verify_cache(out).ok
