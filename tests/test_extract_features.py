"""End-to-end feature extraction into a cache: values, provenance, resume, failures, CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache, CacheWriter
from poselift.extract.backbones import ResNet
from poselift.extract.cli import main as cli_main
from poselift.extract.contracts import PreprocessContract
from poselift.extract.crops import crop, square_crop_affine
from poselift.extract.features import SequenceSpec, extract_features

torch.set_num_threads(1)
W, H = 64, 48
CONTRACT = PreprocessContract(crop_size=48, bbox_scale=1.2)


def write_video(path: Path, n: int, fourcc: str = "mp4v") -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (W, H))
    assert w.isOpened(), fourcc
    for i in range(n):
        f = np.full((H, W, 3), (20, 60 + 4 * i, 100), np.uint8)
        f[10:34, i % 50:i % 50 + 12] = (0, 0, 255)  # a moving red "person"
        w.write(f)
    w.release()
    return path


def track(n: int) -> np.ndarray:
    return np.array([[i % 50, 10, i % 50 + 12, 34] for i in range(n)], np.float32)


def model() -> ResNet:
    torch.manual_seed(0)
    return ResNet(50, 8).eval()


def by_hand(video: Path, boxes: np.ndarray, frames: np.ndarray, m: ResNet, c: PreprocessContract) -> np.ndarray:
    """Decode with cv2 directly, crop with warpAffine, normalise in numpy, plain NCHW forward."""
    cap = cv2.VideoCapture(str(video))
    imgs = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        imgs.append(f)
    crops = [cv2.cvtColor(crop(imgs[fi], square_crop_affine(b, scale=c.bbox_scale, out_size=c.crop_size),
                               c.crop_size), cv2.COLOR_BGR2RGB) for fi, b in zip(frames, boxes)]
    with torch.no_grad():
        return m(torch.from_numpy(c.normalize_numpy(np.stack(crops)))).numpy()


@pytest.fixture()
def videos(tmp_path: Path) -> dict[str, Path]:
    return {"a": write_video(tmp_path / "a.mp4", 30), "b": write_video(tmp_path / "b.mp4", 21),
            "c": write_video(tmp_path / "c.mp4", 12)}


def test_features_equal_direct_forward(tmp_path: Path, videos: dict[str, Path]) -> None:
    m = model()
    frames_b = np.arange(0, 21, 2)  # 50 -> 25 fps style subsampling
    specs = [SequenceSpec("S1/walk/cam0", videos["a"], track(30), attrs={"subject": "S1", "fps": 25.0}),
             SequenceSpec("S1/walk/cam1", videos["b"], track(21)[frames_b], frames_b)]
    out = tmp_path / "feat.h5"
    r = extract_features(specs, out, m, CONTRACT, batch_size=8, dtype=np.float32,
                         weights_sha256="random-init:seed=0", dataset="toy", progress=False)
    assert sorted(r.written) == ["S1/walk/cam0", "S1/walk/cam1"] and not r.failed and r.frames == 41
    c = Cache(out, kind="features", dataset="toy")
    assert c.header.source["weights_sha256"] == "random-init:seed=0"
    assert c.header.source["contract"] == CONTRACT.to_dict() and c.header.source["extractor"] == "resnet50"
    assert c.header.source["feature_dim"] == 256 and len(c.header.inputs_fingerprint) == 64
    for spec in specs:
        fr = spec.frames()
        want = by_hand(Path(spec.source), spec.boxes, fr, m, CONTRACT)
        got = c.read(spec.seq_id, "features")
        assert got.dtype == np.float32 and got.shape == (len(fr), 256)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(c.read(spec.seq_id, "frame_index"), fr)
        np.testing.assert_array_equal(c.read(spec.seq_id, "boxes"), spec.boxes)
        assert c.read(spec.seq_id, "valid").all()
    info = c.info("S1/walk/cam0")
    assert info.attrs["subject"] == "S1" and info.attrs["image_size"] == [W, H] and info.attrs["fps"] == 25.0
    assert c.info("S1/walk/cam1").attrs["source"] == "b.mp4"


def test_workers_float16_and_invalid_frames(tmp_path: Path, videos: dict[str, Path]) -> None:
    m = model()
    boxes = track(30)
    boxes[5] = np.nan                      # no detection
    boxes[6] = [10, 10, 10, 30]            # zero width
    boxes[7] = [500, 500, 520, 540]        # nowhere near the image
    specs = [SequenceSpec("a", videos["a"], boxes), SequenceSpec("b", videos["b"], track(21)),
             SequenceSpec("c", videos["c"], track(12))]
    with pytest.warns(UserWarning, match="outside the image"):
        ref = extract_features(specs, tmp_path / "w0.h5", m, CONTRACT, batch_size=8, num_workers=0,
                               weights_sha256="x", progress=False)
    with pytest.warns(UserWarning, match=r"sequence 'a': 1 frame\(s\) whose crop lies entirely outside"):
        r = extract_features(specs, tmp_path / "w2.h5", m, CONTRACT, batch_size=8, num_workers=2,
                             weights_sha256="x", progress=False)
    assert sorted(r.written) == ["a", "b", "c"] and r.invalid_frames == 3 == ref.invalid_frames
    c0, c2 = Cache(tmp_path / "w0.h5"), Cache(tmp_path / "w2.h5")
    assert c0.content_fingerprint == c2.content_fingerprint  # workers change nothing
    f = c2.read("a", "features")
    assert f.dtype == np.float16
    valid = c2.read("a", "valid")
    assert valid.tolist() == [True] * 5 + [False] * 3 + [True] * 22
    assert (f[5:8] == 0).all() and np.isnan(c2.read("a", "boxes")[5]).all()
    want = by_hand(videos["a"], boxes[valid], np.flatnonzero(valid), m, CONTRACT)
    np.testing.assert_allclose(f[valid].astype(np.float32), want, rtol=2e-3, atol=2e-3)


class _Interrupt(torch.nn.Module):
    """Wraps a backbone and raises after ``n`` batches, like a crash or Ctrl-C mid-run."""

    def __init__(self, inner: torch.nn.Module, n: int) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0
        self.depth, self.feature_dim = inner.depth, inner.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt("simulated interruption")
        return self.inner(x)


def test_resume_after_interruption_does_only_missing_sequences(tmp_path: Path, videos: dict[str, Path]) -> None:
    specs = [SequenceSpec("a", videos["a"], track(30)), SequenceSpec("b", videos["b"], track(21)),
             SequenceSpec("c", videos["c"], track(12))]
    out = tmp_path / "f.h5"
    kw = dict(batch_size=10, weights_sha256="sha-x", progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract_features(specs, out, _Interrupt(model(), 4), CONTRACT, **kw)  # a: 3 batches, b: 1 of 3
    assert not out.exists()
    assert CacheWriter(out, _header_of(specs, CONTRACT)).done() == {"a"}
    counting = _Interrupt(model(), 10 ** 6)
    r = extract_features(specs, out, counting, CONTRACT, **kw)
    assert r.skipped == ["a"] and sorted(r.written) == ["b", "c"] and counting.calls == 3 + 2
    clean = extract_features(specs, tmp_path / "clean.h5", model(), CONTRACT, **kw)
    assert sorted(clean.written) == ["a", "b", "c"]
    assert Cache(out).content_fingerprint == Cache(tmp_path / "clean.h5").content_fingerprint
    again = extract_features(specs, out, model(), CONTRACT, **kw)
    assert again.skipped == ["a", "b", "c"] and again.written == []


def _header_of(specs, contract):
    from poselift.datasets.cache import CacheHeader
    from poselift.extract.features import inputs_fingerprint

    return CacheHeader(kind="features", dataset="custom", source={
        "extractor": "resnet50", "weights_sha256": "sha-x", "contract": contract.to_dict(),
        "feature_dim": 256, "dtype": "float16",
        "precision": {"resolved": "fp32", "autocast_dtype": None}}, inputs_fingerprint=inputs_fingerprint(specs))


def test_broken_sequences_fail_clearly_while_others_are_written(tmp_path: Path, videos: dict[str, Path]) -> None:
    good = write_video(tmp_path / "g.avi", 30, "MJPG").read_bytes()
    (tmp_path / "cut.avi").write_bytes(good[: int(len(good) * 0.6)])
    mp4 = videos["a"].read_bytes()
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    specs = [SequenceSpec("cut_avi", tmp_path / "cut.avi", track(30)),
             SequenceSpec("ok", videos["b"], track(21)),
             SequenceSpec("cut_mp4", tmp_path / "cut.mp4", track(30)),
             SequenceSpec("nobox", videos["c"], np.full((12, 4), np.nan, np.float32)),
             SequenceSpec("toolong", videos["c"], track(15)),
             SequenceSpec("ok2", videos["c"], track(12))]
    out = tmp_path / "f.h5"
    r = extract_features(specs, out, model(), CONTRACT, batch_size=4, num_workers=2, weights_sha256="x",
                         progress=False)
    assert sorted(r.written) == ["ok", "ok2"]
    assert set(r.failed) == {"cut_avi", "cut_mp4", "nobox", "toolong"}
    assert "CorruptVideoError" in r.failed["cut_avi"] and "cut.avi: frame 1" in r.failed["cut_avi"]
    assert "cut.mp4: OpenCV cannot open" in r.failed["cut_mp4"]
    assert "no frame has a person box" in r.failed["nobox"]
    assert re.search(r"15 box rows but \S*c\.mp4 has 12 frames", r.failed["toolong"])  # both counts
    c = Cache(out)
    assert c.ids == ["ok", "ok2"] and c.info("ok").n_frames == 21


def test_cli_features_and_probe(tmp_path: Path, videos: dict[str, Path], capsys) -> None:
    np.save(tmp_path / "a_boxes.npy", np.concatenate([track(30)[:, :2] + [6, 12], np.full((30, 2), [12, 24])], 1))
    coco = [{"image_id": i, "category_id": 1, "bbox": [i % 50, 10, 12, 24], "score": 0.9} for i in range(21)]
    (tmp_path / "b_dets.json").write_text(json.dumps(coco))
    manifest = [{"seq_id": "a", "source": "a.mp4", "boxes": "a_boxes.npy", "box_format": "cxcywh",
                 "attrs": {"subject": "S1"}},
                {"seq_id": "b", "source": "b.mp4", "boxes": "b_dets.json", "box_format": "coco"}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    out = tmp_path / "cli.h5"
    args = ["features", str(out), "--manifest", str(tmp_path / "m.json"), "--random-init", "--base-width", "8",
            "--crop-size", "48", "--bbox-scale", "1.2", "--workers", "0", "--no-progress", "--dtype", "float32"]
    assert cli_main(args) == 0
    c = Cache(out, kind="features")
    assert c.ids == ["a", "b"] and c.info("a").attrs["subject"] == "S1"
    assert c.header.source["weights_sha256"] == "random-init:seed=0"
    np.testing.assert_allclose(c.read("a", "features"), by_hand(videos["a"], track(30), np.arange(30), model(),
                                                                CONTRACT), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c.read("b", "boxes"), track(21))
    assert "wrote 2, skipped 0" in capsys.readouterr().out
    assert cli_main(args) == 0 and "wrote 0, skipped 2" in capsys.readouterr().out
    assert cli_main(["features", str(tmp_path / "x.h5"), "--manifest", str(tmp_path / "m.json")]) != 0
    assert cli_main(["probe", str(videos["b"])]) == 0
    assert "21 frames, 25 fps, 64x48" in capsys.readouterr().out
