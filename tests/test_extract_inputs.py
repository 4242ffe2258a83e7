"""Bad extraction inputs fail only their own sequence: box/frame count mismatches in either
direction, unreadable box files (wrong shape, object arrays, non-numeric JSON fields, missing
file); one log line per failure, honest summary counts, exit status 1; PoseTrack18-style large
image ids through --image-id-offset."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache
from poselift.extract.backbones import ResNet
from poselift.extract.cli import main as cli_main
from poselift.extract.cli_keypoints import load_keypoint_manifest
from poselift.extract.contracts import PreprocessContract
from poselift.extract.features import SequenceSpec, extract_features

torch.set_num_threads(1)
W, H, N = 64, 48, 24


def _video(path: Path, n: int = N) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    for i in range(n):
        f = np.full((H, W, 3), (20, 60 + 4 * i, 100), np.uint8)
        f[10:34, i:i + 12] = (0, 0, 255)
        w.write(f)
    w.release()
    return path


def _boxes(n: int) -> np.ndarray:
    return np.array([[i % 40, 10, i % 40 + 12, 34] for i in range(n)], np.float32)


def _args(out: Path, manifest: Path, *extra: str) -> list[str]:
    return ["features", str(out), "--manifest", str(manifest), "--random-init", "--base-width", "8",
            "--crop-size", "32", "--workers", "0", "--no-progress", "--dtype", "float32", *extra]


def _failure_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and re.search(r"failed|skipped", r.getMessage())]


@pytest.fixture()
def setup(tmp_path: Path) -> Path:
    _video(tmp_path / "v.mp4")
    np.save(tmp_path / "good.npy", _boxes(N))
    return tmp_path


def test_box_count_mismatch_fails_that_sequence_in_both_directions(setup: Path, caplog, capsys) -> None:
    np.save(setup / "short.npy", _boxes(10))
    np.save(setup / "long.npy", _boxes(30))
    entries = [{"seq_id": "good", "source": "v.mp4", "boxes": "good.npy"},
               {"seq_id": "short", "source": "v.mp4", "boxes": "short.npy"},
               {"seq_id": "long", "source": "v.mp4", "boxes": "long.npy"}]
    (setup / "m.json").write_text(json.dumps(entries))
    caplog.set_level(logging.INFO)
    assert cli_main(_args(setup / "o.h5", setup / "m.json")) == 1
    assert Cache(setup / "o.h5").ids == ["good"]  # nothing truncated to 10 frames is stored
    lines = _failure_lines(caplog)
    assert len(lines) == 2, lines  # one line per failure, no 'skipped' + 'failed' pair
    short = next(ln for ln in lines if "'short'" in ln)
    assert "10 box rows" in short and f"has {N} frames" in short and "v.mp4" in short
    assert "30 box rows" in next(ln for ln in lines if "'long'" in ln)
    out = capsys.readouterr().out
    assert f"wrote 1, skipped 0 (already cached), failed 2; {N} frames" in out


def test_bad_box_files_fail_only_their_sequence(setup: Path, caplog, capsys) -> None:
    np.save(setup / "three.npy", _boxes(N)[:, :3])
    np.save(setup / "obj.npy", np.array([None] * N, dtype=object), allow_pickle=True)
    (setup / "dets.json").write_text(json.dumps([{"image_id": 0, "bbox": [1, 2, 3, 4], "score": "a"}]))
    (setup / "bbox.json").write_text(json.dumps([{"image_id": 0, "bbox": [1, "x", 3, 4]}]))
    entries = [{"seq_id": "three", "source": "v.mp4", "boxes": "three.npy"},
               {"seq_id": "good", "source": "v.mp4", "boxes": "good.npy"},
               {"seq_id": "obj", "source": "v.mp4", "boxes": "obj.npy"},
               {"seq_id": "score", "source": "v.mp4", "boxes": "dets.json", "box_format": "coco"},
               {"seq_id": "bbox", "source": "v.mp4", "boxes": "bbox.json", "box_format": "coco"},
               {"seq_id": "gone", "source": "v.mp4", "boxes": "missing.npy"}]
    (setup / "m.json").write_text(json.dumps(entries))
    caplog.set_level(logging.INFO)
    assert cli_main(_args(setup / "o.h5", setup / "m.json")) == 1
    assert Cache(setup / "o.h5").ids == ["good"]
    lines = {re.search(r"sequence '(\w+)'", ln).group(1): ln for ln in _failure_lines(caplog)}
    assert sorted(lines) == ["bbox", "gone", "obj", "score", "three"] and len(_failure_lines(caplog)) == 5
    assert "three.npy" in lines["three"] and "(T, 4)" in lines["three"] and "(24, 3)" in lines["three"]
    assert "obj.npy" in lines["obj"] and "numeric (T, 4) box array" in lines["obj"]
    assert "dets.json: entry 0: field 'score' must be a number, got 'a'" in lines["score"]
    assert "bbox.json: entry 0: field 'bbox' must be 4 finite numbers" in lines["bbox"]
    assert "missing.npy: box file does not exist" in lines["gone"]
    assert all("manifest entry" in ln for ln in lines.values())
    assert "failed 5" in capsys.readouterr().out


class _BreaksOnCall(torch.nn.Module):
    """Returns inf features on one call: the sequence being extracted then fails mid-way."""

    def __init__(self, inner: torch.nn.Module, bad_call: int) -> None:
        super().__init__()
        self.inner, self.bad_call, self.calls = inner, bad_call, 0
        self.feature_dim = getattr(inner, "feature_dim", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("inf") if self.calls == self.bad_call else out


def test_frames_of_a_sequence_failing_midway_are_not_counted(setup: Path) -> None:
    torch.manual_seed(0)
    specs = [SequenceSpec("a", str(setup / "v.mp4"), _boxes(N)),
             SequenceSpec("b", str(setup / "v.mp4"), _boxes(N))]
    # batches of 8 frames: calls 1-3 are 'a', 4-6 are 'b'; call 5 breaks 'b' after 8 frames
    model = _BreaksOnCall(ResNet(18, 8).eval(), bad_call=5)
    res = extract_features(specs, setup / "o.h5", model, PreprocessContract(crop_size=32),
                           batch_size=8, num_workers=0, dtype="float32", progress=False,
                           weights_sha256="test")
    assert res.written == ["a"] and list(res.failed) == ["b"] and "non-finite" in res.failed["b"]
    assert res.frames == N  # 'b' had 8 frames through the model before it failed: not counted


def test_large_image_ids_need_and_take_an_offset(setup: Path, caplog) -> None:
    base = 10003420000  # PoseTrack18: 1 + video 000342 + frame 0000
    dets = [{"image_id": base + i, "category_id": 1, "bbox": [i % 40, 10, 12, 24], "score": 0.9}
            for i in range(N)]
    (setup / "pt.json").write_text(json.dumps(dets))
    (setup / "m.json").write_text(json.dumps([{"seq_id": "pt", "source": "v.mp4", "boxes": "pt.json",
                                               "box_format": "coco"}]))
    caplog.set_level(logging.INFO)
    assert cli_main(_args(setup / "o.h5", setup / "m.json")) == 1
    assert "--image-id-offset" in " ".join(_failure_lines(caplog))
    assert cli_main(_args(setup / "o2.h5", setup / "m.json", "--image-id-offset", str(base))) == 0
    np.testing.assert_allclose(Cache(setup / "o2.h5").read("pt", "boxes"), _boxes(N))
    # the keypoints manifest takes the same offset and the same per-entry failure handling
    failed: dict[str, str] = {}
    jobs = load_keypoint_manifest(json.loads((setup / "m.json").read_text()) +
                                  [{"seq_id": "bad", "source": "v.mp4", "boxes": "nope.json",
                                    "box_format": "coco"}], setup, image_id_offset=base, failed=failed)
    assert len(jobs) == 1 and list(failed) == ["bad"] and "nope.json" in failed["bad"]


def test_extract_dist_fails_only_the_bad_entry(setup: Path, caplog, monkeypatch) -> None:
    from poselift.extract.distributed_cli import main as dist_main

    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    np.save(setup / "short.npy", _boxes(10))
    (setup / "m.json").write_text(json.dumps([
        {"seq_id": "bad", "source": "v.mp4", "boxes": "three.npy"},
        {"seq_id": "short", "source": "v.mp4", "boxes": "short.npy"},
        {"seq_id": "good", "source": "v.mp4", "boxes": "good.npy"}]))
    caplog.set_level(logging.INFO)
    rc = dist_main([str(setup / "d.h5"), "--manifest", str(setup / "m.json"), "--random-init",
                    "--base-width", "8", "--crop-size", "32", "--workers", "0", "--device", "cpu",
                    "--no-progress"])
    assert rc == 1 and Cache(setup / "d.h5").ids == ["good"]
    lines = _failure_lines(caplog)
    assert len(lines) == 2 and any("three.npy: box file does not exist" in ln for ln in lines)
    assert any("10 box rows" in ln for ln in lines)
