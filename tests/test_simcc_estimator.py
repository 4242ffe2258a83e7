"""SimCC as an extraction estimator: checkpoint layouts and strict loading, decode through the crop
box, flip-back, and ``poselift-extract keypoints --estimator simcc`` on a clip written here."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from poselift.core.checkpoints import CheckpointError
from poselift.datasets.cache import Cache
from poselift.extract.backbones import file_sha256
from poselift.extract.cli import main
from poselift.extract.contracts import CONTRACTS, IMAGENET_MEAN, simcc_contract
from poselift.extract.estimators.hrnet import HRNet
from poselift.extract.estimators.sikr import crop_to_image, flip_pairs_for
from poselift.extract.estimators.simcc import simcc_decode
from poselift.extract.estimators.simcc_model import SimCCPose, flip_simcc_back, load_simcc, simcc_flip_test
from poselift.extract.keypoint_runners import SimccRunner

HW = (64, 64)
N_FRAMES, W, H = 6, 160, 120


def tiny(seed: int = 0, split: float = 2.0) -> SimCCPose:
    torch.manual_seed(seed)
    return SimCCPose(HRNet(width=8, num_joints=17), HW, split).eval()


def outputs(m: nn.Module, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        return m(torch.randn(2, 3, *HW))


def mmpose_layout(sd: dict) -> dict:
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith("maps.final_layer."):
            out["head." + k[5:]] = v
        elif k.startswith("maps."):
            out["backbone." + k[5:]] = v
        else:
            out[k] = v
    return {"meta": {"epoch": 1}, "state_dict": out}


def leeyegy_layout(sd: dict) -> dict:
    return OrderedDict(("module." + k.split(".", 1)[1], v) for k, v in sd.items())


@pytest.mark.parametrize("split", [2.0, 1.5])
def test_state_dict_round_trip_in_every_layout(tmp_path: Path, split: float) -> None:
    m = tiny(split=split)
    ref = outputs(m)
    assert ref[0].shape == (2, 17, int(64 * split)) and ref[1].shape == (2, 17, int(64 * split))
    for name, obj in (("poselift", m.state_dict()), ("mmpose", mmpose_layout(m.state_dict())),
                      ("simcc", leeyegy_layout(m.state_dict()))):
        p = tmp_path / f"{name}.pth"
        torch.save(obj, p)
        got = load_simcc(p, HW)
        assert got.split_ratio == split and got.num_joints == 17 and got.maps.width == 8
        for a, b in zip(outputs(got), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a retrained model differs, so the comparison above can fail
    assert not torch.equal(outputs(tiny(seed=5, split=split))[0], ref[0])


def test_strict_load_names_file_and_keys(tmp_path: Path) -> None:
    sd = tiny().state_dict()
    sd.pop("maps.stage3.0.fuse_layers.1.0.0.0.weight")
    sd["head.extra.weight"] = torch.zeros(1)
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(CheckpointError) as e:
        load_simcc(p, HW)
    msg = str(e.value)
    assert "bad.pth" in msg and "maps.stage3.0.fuse_layers.1.0.0.0.weight" in msg and "head.extra.weight" in msg
    torch.save({"conv1.weight": torch.zeros(1)}, p)
    with pytest.raises(CheckpointError, match="bad.pth: no SimCC head"):
        load_simcc(p, HW)
    torch.save(tiny().state_dict(), p)
    with pytest.raises(CheckpointError, match="input 64x32"):
        load_simcc(p, (64, 32))  # the head's input features tell the trained size
    with pytest.raises(CheckpointError, match="split ratio 3"):
        load_simcc(p, HW, split_ratio=3.0)


def test_mmpose_contract_preset() -> None:
    c = CONTRACTS["mmpose-simcc-coco"]
    assert c.crop_hw == (256, 192) and c.box_mode == "aspect" and c.bbox_scale == 1.25
    assert c.mean == IMAGENET_MEAN and c.std == (0.229, 0.224, 0.225) and c.channel_order == "RGB"
    assert "k=2" in c.decode and "sigma=6" in c.decode
    # MMPose's 0-255 statistics are the ImageNet ones x 255
    np.testing.assert_allclose(np.array(c.mean) * 255, [123.675, 116.28, 103.53], atol=1e-9)


class _Fixed(nn.Module):
    """Returns the same crafted logits for every crop."""

    def __init__(self, lx: torch.Tensor, ly: torch.Tensor, split: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.lx, self.ly, self.split_ratio, self.num_joints = lx, ly, split, lx.shape[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        return self.lx.expand(n, -1, -1) + self.w, self.ly.expand(n, -1, -1) + self.w


def test_crafted_logits_decode_to_the_expected_image_pixel() -> None:
    c = simcc_contract(input_size=HW)
    k = 2.0
    lx, ly = torch.full((1, 17, 128), -5.0), torch.full((1, 17, 128), -5.0)
    lx[0, :, 61], ly[0, :, 40] = 5.0, 5.0  # crop px (30.5, 20)
    lx[0, 3, 61], lx[0, 3, 10], ly[0, 3, 99] = -5.0, 5.0, 6.0  # joint 3 at crop px (5, 49.5)
    runner = SimccRunner(_Fixed(lx, ly, k), c)
    box = np.array([40.0, 10.0, 90.0, 110.0], np.float32)
    cbox = c.crop_box(box)
    kp, sc = runner(np.zeros((1, *HW, 3), np.uint8), cbox)
    inv = cv2.invertAffineTransform(c.crop_affine(box))  # crop px -> image px, the crop's own matrix
    for j, crop_px in ((0, (30.5, 20.0)), (3, (5.0, 49.5))):
        expect = inv @ np.array([*crop_px, 1.0])
        np.testing.assert_allclose(kp[0, j], expect, atol=1e-4)
    # score = the smaller softmax peak of the two axes; joint 3's y has a rival bin at 5
    p5 = np.exp(5) / (np.exp(5) + 127 * np.exp(-5))
    p6 = np.exp(6) / (np.exp(6) + np.exp(5) + 126 * np.exp(-5))
    np.testing.assert_allclose(sc[0, 0], p5, rtol=1e-5)
    np.testing.assert_allclose(sc[0, 3], p6, rtol=1e-5)


def test_flip_back_reverses_bins_and_swaps_pairs() -> None:
    pairs = flip_pairs_for(17)
    lx, ly = torch.zeros(1, 17, 128), torch.zeros(1, 17, 128)
    lx[0, 1, 20], ly[0, 1, 33] = 1.0, 1.0  # left eye in the mirrored crop
    fx, fy = flip_simcc_back(lx, ly, pairs)
    assert int(fx[0, 2].argmax()) == 127 - 20 and int(fy[0, 2].argmax()) == 33
    assert fx[0, 1].abs().sum() == 0
    # on a mirror-symmetric crop the flip test agrees with the plain run up to the half-pixel bin shift
    m = tiny()
    x = torch.randn(1, 3, *HW)
    x = (x + x.flip(-1)) / 2
    with torch.no_grad():
        ax, ay = simcc_flip_test(m, x, pairs)
        bx, by = m(x)
    torch.testing.assert_close(ay, (by + by[:, [dict(pairs + tuple((b, a) for a, b in pairs)).get(i, i)
                                                 for i in range(17)]]) / 2)
    assert ax.shape == bx.shape


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("vid") / "clip.mp4"
    vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    assert vw.isOpened()
    rng = np.random.default_rng(0)
    for i in range(N_FRAMES):
        f = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        cv2.rectangle(f, (30 + 3 * i, 20), (80 + 3 * i, 100), (20, 200, 40), -1)
        vw.write(f)
    vw.release()
    return p


def _frames(p: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(p))
    out = []
    while (r := cap.read())[0]:
        out.append(r[1])
    return out


def test_cli_extracts_simcc_keypoints_matching_by_hand(clip: Path, tmp_path: Path, capsys) -> None:
    m = tiny()
    ckpt = tmp_path / "model_best.pth"
    torch.save(m.state_dict(), ckpt)  # what poselift-train writes for the simcc recipe
    boxes = np.array([[30 + 3 * i, 20, 80 + 3 * i, 100] for i in range(N_FRAMES)], np.float32)
    np.save(tmp_path / "boxes.npy", boxes)
    out = tmp_path / "kp.h5"
    args = ["keypoints", str(out), "--estimator", "simcc", "--weights", str(ckpt), "--video", str(clip),
            "--boxes", str(tmp_path / "boxes.npy"), "--box-format", "xyxy", "--input-size", "64", "64",
            "--flip-test", "--workers", "0", "--batch-size", "4", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    c = simcc_contract(input_size=HW)
    frames = _frames(clip)
    with Cache(out) as cache:
        src = cache.header.source
        assert src["estimator"] == "simcc" and src["flip_test"] is True and src["simcc"]["split_ratio"] == 2.0
        assert src["contract"] == c.to_dict() and src["weights_sha256"] == file_sha256(ckpt)
        (sid,) = cache.ids
        kp, sc = cache.read(sid, "keypoints"), cache.read(sid, "scores")
    assert kp.shape == (N_FRAMES, 17, 2) and np.isfinite(kp).all() and ((sc > 0) & (sc <= 1)).all()
    for i in (0, 5):
        crop = cv2.warpAffine(frames[i], c.crop_affine(boxes[i]), (64, 64), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        x = torch.from_numpy(c.normalize_numpy(crop[None, ..., ::-1].copy()))
        with torch.no_grad():
            xy, s = simcc_decode(*simcc_flip_test(m, x, flip_pairs_for(17)), 2.0)
        np.testing.assert_allclose(kp[i], crop_to_image(xy.numpy(), c.crop_box(boxes[i]), HW)[0], atol=1e-3)
        np.testing.assert_allclose(sc[i], s[0].numpy(), atol=1e-5)
    sd = m.state_dict()
    sd.pop("head.mlp_head_y.bias")
    torch.save(sd, ckpt)
    assert main(args[:1] + [str(tmp_path / "o2.h5")] + args[2:]) == 2
    err = capsys.readouterr().err
    assert "head.mlp_head_y.bias" in err and "model_best.pth" in err


def test_infer_runs_simcc_on_detected_boxes(tmp_path: Path) -> None:
    """``poselift infer --estimator simcc``: YOLOX boxes -> SimCC 2D (tiny nets) -> lift."""
    import importlib.util

    from poselift.infer import InferOptions, run_infer
    from poselift.lifting.videopose3d.interop import export_videopose3d
    from poselift.lifting.videopose3d.model import TemporalModel

    spec = importlib.util.spec_from_file_location("infer_detect", Path(__file__).with_name("test_infer_detect.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frames = tmp_path / "clip"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(4):
        cv2.imwrite(str(frames / f"{t:03d}.png"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    torch.save(tiny().state_dict(), tmp_path / "simcc.pth")
    export_videopose3d(tmp_path / "lifter.bin", TemporalModel(17, 2, 17, filter_widths=[3], channels=8).eval())
    o = InferOptions(lifter=str(tmp_path / "lifter.bin"), detector=str(mod._yolox(tmp_path / "yolox.pth")),
                     detector_size=160, estimator="simcc", estimator_weights=str(tmp_path / "simcc.pth"),
                     estimator_input_size=HW, device="cpu", progress=False, render=False)
    res = run_infer([str(frames)], tmp_path / "out", o)
    with Cache(tmp_path / "out" / "keypoints2d.h5", kind="keypoints2d") as kp:
        assert kp.header.source["estimator"] == "simcc" and len(kp) == res["tracks"] >= 1
        for s in kp.ids:
            k = kp.read(s, "keypoints")
            assert k.shape == (4, 17, 2) and np.isfinite(k).all() and kp.read(s, "valid").all()


def test_cli_simcc_several_boxes_per_frame_skips_alphapose_pnms(clip: Path, tmp_path: Path) -> None:
    """Two people per frame from a detection JSON: pose NMS is off by default for SimCC (its
    softmax scores are far below AlphaPose's 0.3 survival threshold), so both tracks are written."""
    import json

    ckpt = tmp_path / "simcc.pth"
    torch.save(tiny().state_dict(), ckpt)
    dets = [{"image_id": f"{i:06d}.jpg", "category_id": 1, "bbox": [30 + 3 * i + dx, 20, 50, 80], "score": 0.9}
            for i in range(N_FRAMES) for dx in (0, 70)]
    (tmp_path / "det.json").write_text(json.dumps(dets))
    out = tmp_path / "multi.h5"
    args = ["keypoints", str(out), "--estimator", "simcc", "--weights", str(ckpt), "--video", str(clip),
            "--boxes", str(tmp_path / "det.json"), "--box-format", "coco", "--input-size", "64", "64",
            "--workers", "0", "--batch-size", "8", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    with Cache(out) as c:
        assert c.header.source["pose_nms"] is None
        assert c.ids == ["clip/track0", "clip/track1"]
        scores = np.concatenate([c.read(s, "scores") for s in c.ids])
    assert scores.max() < 0.3
    # forcing AlphaPose's body P-NMS drops every pose (max keypoint score < 0.3)
    assert main(args[:1] + [str(tmp_path / "nms.h5")] + args[2:] + ["--pose-nms", "body"]) == 0
    with Cache(tmp_path / "nms.h5") as c:
        assert c.ids == [] and c.header.source["pose_nms"]["gamma"] == 22.48
