"""Loaders and CLIs take zoo names: generated checkpoints stand in for the published files."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache
from poselift.extract.backbones import ResNet, load_torchvision_resnet
from poselift.extract.estimators.fastpose import FastPose, load_alphapose
from poselift.lifting.videopose3d.model import TemporalModel
from poselift.lifting.videopose3d.interop import load_videopose3d
from poselift.zoo import table as tbl

sys.path.insert(0, str(Path(__file__).parent))
from zoo_server import ZooServer, extra_table  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("POSELIFT_HOME", str(tmp_path / "home"))
    for k in ("POSELIFT_OFFLINE", "POSELIFT_WEIGHTS_MIRROR", "POSELIFT_ZOO_EXTRA"):
        monkeypatch.delenv(k, raising=False)
    tbl._load.cache_clear()
    (tmp_path / "home" / "weights").mkdir(parents=True)
    return tmp_path / "home" / "weights"


def test_load_videopose3d_by_name_downloads_once(tmp_path, home, monkeypatch) -> None:
    torch.manual_seed(0)
    m = TemporalModel(17, 2, 17, (3, 3), channels=8).eval()
    src = tmp_path / "gen.bin"
    torch.save({"epoch": 1, "model_pos": m.state_dict(), "model_traj": None}, src)  # run.py's layout
    server = ZooServer()
    try:
        server.files["pretrained_h36m_cpn.bin"] = src.read_bytes()
        monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
        pos, traj = load_videopose3d("videopose3d-h36m-cpn")
        x = torch.randn(1, 12, 17, 2)
        with torch.no_grad():
            torch.testing.assert_close(pos(x), m(x))
        assert traj is None and (home / "pretrained_h36m_cpn.bin").read_bytes() == src.read_bytes()
        monkeypatch.setenv("POSELIFT_OFFLINE", "1")  # cached now: works offline
        load_videopose3d("videopose3d-h36m-cpn")
        assert len(server.gets("pretrained_h36m_cpn.bin")) == 1
    finally:
        server.close()


def test_alphapose_and_backbone_by_name_from_the_zoo_folder(home, monkeypatch) -> None:
    monkeypatch.setenv("POSELIFT_OFFLINE", "1")  # files placed by hand: no network needed
    torch.manual_seed(1)
    fp = FastPose(17, stem=16, widths=(64, 128, 256, 512), duc1_out=256, duc2_out=128).eval()
    torch.save(fp.state_dict(), home / "fast_res50_256x192.pth")
    got = load_alphapose("alphapose-fastpose-coco17")
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(got(x), fp(x))
    torch.manual_seed(2)
    rn = ResNet(50, 8).eval()
    torch.save(rn.state_dict(), home / "resnet50-0676ba61.pth")
    loaded = load_torchvision_resnet("resnet50-imagenet-v1")
    assert loaded.load_info["source"] == str(home / "resnet50-0676ba61.pth")
    y = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), rn(y))
    with pytest.raises(FileNotFoundError, match="did you mean alphapose-fastpose-coco17"):
        load_alphapose("alphapose-fastpose-coco")


def test_extract_keypoints_cli_with_weights_name(tmp_path, home, monkeypatch) -> None:
    import cv2
    from test_extract_keypoints import N_FRAMES, tiny_fastpose

    from poselift.extract.cli import main as cli_main
    from poselift.zoo import file_sha256

    monkeypatch.setenv("POSELIFT_OFFLINE", "1")  # placed in the zoo folder by hand
    torch.save(tiny_fastpose().state_dict(), home / "halpe26_fast_res50_256x192.pth")
    video = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (160, 120))
    for i in range(N_FRAMES):
        f = np.full((120, 160, 3), 90, np.uint8)
        cv2.rectangle(f, (30 + 2 * i, 20), (70 + 2 * i, 100), (20, 200, 40), -1)
        vw.write(f)
    vw.release()
    dets = [{"image_id": i, "category_id": 1, "bbox": [30 + 2 * i, 20, 40, 80], "score": 0.9}
            for i in range(N_FRAMES)]
    (tmp_path / "det.json").write_text(json.dumps(dets))
    out = tmp_path / "kp.h5"
    assert cli_main(["keypoints", str(out), "--estimator", "sikr", "--weights", "alphapose-fastpose-halpe26",
                     "--video", str(video), "--boxes", str(tmp_path / "det.json"), "--box-format", "coco",
                     "--input-size", "64", "48", "--workers", "0", "--batch-size", "4", "--no-progress",
                     "--device", "cpu"]) == 0
    with Cache(out) as c:
        assert c.header.source["weights_name"] == "alphapose-fastpose-halpe26"
        assert c.header.source["weights_sha256"] == file_sha256(home / "halpe26_fast_res50_256x192.pth")


def test_extract_features_cli_with_weights_name_records_provenance(tmp_path, home, monkeypatch) -> None:
    from test_extract_features import CONTRACT, by_hand, track, write_video

    from poselift.extract.cli import main as cli_main

    torch.manual_seed(0)
    rn = ResNet(50, 8).eval()
    ckpt = tmp_path / "gen.pth"
    torch.save(rn.state_dict(), ckpt)
    data = ckpt.read_bytes()
    monkeypatch.setenv("POSELIFT_ZOO_EXTRA", str(extra_table(tmp_path / "extra.json", [
        {"name": "test-resnet50-w8", "file": "test_resnet50_w8.pth",
         "sha256": hashlib.sha256(data).hexdigest()}])))
    video = write_video(tmp_path / "a.mp4", 6)
    np.save(tmp_path / "a_boxes.npy", track(6))
    (tmp_path / "m.json").write_text(json.dumps([{"seq_id": "a", "source": "a.mp4", "boxes": "a_boxes.npy"}]))
    server = ZooServer()
    try:
        server.files["test_resnet50_w8.pth"] = data
        monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
        out = tmp_path / "f.h5"
        assert cli_main(["features", str(out), "--manifest", str(tmp_path / "m.json"), "--backbone", "resnet50",
                         "--weights", "test-resnet50-w8", "--crop-size", "48", "--bbox-scale", "1.2",
                         "--workers", "0", "--no-progress", "--dtype", "float32"]) == 0
    finally:
        server.close()
    c = Cache(out, kind="features")
    assert c.header.source["weights_name"] == "test-resnet50-w8"
    assert c.header.source["weights_sha256"] == hashlib.sha256(data).hexdigest()
    np.testing.assert_allclose(c.read("a", "features"), by_hand(video, track(6), np.arange(6), rn, CONTRACT),
                               rtol=1e-4, atol=1e-5)
