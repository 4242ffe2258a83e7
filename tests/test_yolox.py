"""YOLOX in plain PyTorch: official key layout, strict loading, size inference, forward shapes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from poselift.core.checkpoints import CheckpointError
from poselift.extract import YOLOX, load_yolox
from poselift.extract.detectors import YOLOX_SIZES, decode_outputs, yolox_config_from_state_dict

DATA = Path(__file__).parent / "data"  # yolox_{s,tiny}_state_dict_keys.json: copies of shared/formats


def _official_keys(name: str) -> dict[str, list[int]]:
    return json.loads((DATA / f"yolox_{name}_state_dict_keys.json").read_text())


def _checkpoint_from_key_list(keys: dict[str, list[int]], seed: int = 0) -> dict:
    """An official-layout checkpoint ({"model": sd, "optimizer": ..., "start_epoch": ...})."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(100, dtype=torch.int64)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("bn.weight"):
            sd[k] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[k] = 0.05 * torch.randn(shape, generator=g)
    return {"model": sd, "optimizer": {}, "start_epoch": 300}


@pytest.mark.parametrize("name", ["s", "tiny"])
def test_state_dict_keys_and_shapes_match_official_lists(name):
    keys = _official_keys(name)
    with torch.device("meta"):
        model = YOLOX.from_name(name)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(own) == list(keys)  # same names in the same order
    assert own == keys
    assert len(own) == 462


@pytest.mark.parametrize("name", ["tiny", "s"])
def test_load_official_layout_checkpoint_strictly(tmp_path, name):
    path = tmp_path / f"yolox_{name}.pth"
    ckpt = _checkpoint_from_key_list(_official_keys(name))
    torch.save(ckpt, path)
    model = load_yolox(path)
    assert not model.training
    assert model.width == YOLOX_SIZES[name][1] and model.depthwise is False
    assert model.test_size == YOLOX_SIZES[name][3]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96) * 255)
    # 64x96 input: (8*12) + (4*6) + (2*3) anchors, 85 = 4 box + obj + 80 classes
    assert out.shape == (2, 96 + 24 + 6, 85)
    assert torch.all((out[..., 4:] >= 0) & (out[..., 4:] <= 1)) and torch.all(out[..., 2:4] > 0)


@pytest.mark.parametrize("name", list(YOLOX_SIZES))
def test_sizes_inferred_from_weights(name):
    depth, width, depthwise, _ = YOLOX_SIZES[name]
    with torch.device("meta"):
        sd = YOLOX.from_name(name).state_dict()
        cfg = yolox_config_from_state_dict(sd)
        rebuilt = YOLOX(**cfg).state_dict()
    assert cfg["width"] == width and cfg["depthwise"] == depthwise and cfg["num_classes"] == 80
    assert round(3 * cfg["depth"]) == round(3 * depth)
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_nano_depthwise_roundtrip(tmp_path):
    model = YOLOX.from_name("nano").eval()
    sd = model.state_dict()
    assert "backbone.backbone.dark2.0.dconv.conv.weight" in sd
    assert sd["backbone.backbone.dark2.0.dconv.conv.weight"].shape == (16, 1, 3, 3)
    assert sd["backbone.backbone.stem.conv.conv.weight"].shape == (16, 12, 3, 3)  # stem not depthwise
    assert sd["head.stems.0.conv.weight"].shape == (64, 64, 1, 1)
    torch.save({"model": sd}, tmp_path / "nano.pth")
    loaded = load_yolox(tmp_path / "nano.pth")
    assert loaded.depthwise and loaded.width == 0.25 and loaded.test_size == 416
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_bad_checkpoints_name_file_and_keys(tmp_path):
    keys = _official_keys("tiny")
    sd = _checkpoint_from_key_list(keys)["model"]
    missing = dict(sd)
    del missing["head.obj_preds.2.bias"]
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*missing key\(s\) \['head\.obj_preds\.2\.bias'\]"):
        load_yolox(tmp_path / "missing.pth")
    extra = dict(sd, **{"head.extra.weight": torch.zeros(3)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected key\(s\) \['head\.extra\.weight'\]"):
        load_yolox(tmp_path / "extra.pth")
    bad = dict(sd)
    bad["head.reg_preds.1.weight"] = torch.zeros(4, 95, 1, 1)
    torch.save({"model": bad}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape\.pth.*head\.reg_preds\.1\.weight.*\(4, 95, 1, 1\)"):
        load_yolox(tmp_path / "shape.pth")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(KeyError, match=r"other\.pth: not a YOLOX state dict"):
        load_yolox(tmp_path / "other.pth")


def test_decode_matches_explicit_loop():
    g = torch.Generator().manual_seed(1)
    sizes, strides = [(2, 3), (1, 2)], [8, 16]
    raw = torch.randn(2, 8, 7, generator=g)
    out = decode_outputs(raw, sizes, strides)
    a = 0
    for (h, w), s in zip(sizes, strides):
        for row in range(h):
            for col in range(w):
                r = raw[:, a]
                assert torch.allclose(out[:, a, 0], (r[:, 0] + col) * s)
                assert torch.allclose(out[:, a, 1], (r[:, 1] + row) * s)
                assert torch.allclose(out[:, a, 2], torch.exp(r[:, 2]) * s)
                assert torch.allclose(out[:, a, 3], torch.exp(r[:, 3]) * s)
                assert torch.equal(out[:, a, 4:], r[:, 4:])
                a += 1


def test_focus_channel_order_and_forward_against_manual_stem():
    model = YOLOX(0.33, 0.25, False, num_classes=3).eval()
    x = torch.rand(1, 3, 32, 32) * 255
    stem = model.backbone.backbone.stem.conv
    cat = torch.cat([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], 1)
    bn = stem.bn
    ref = F.silu(F.batch_norm(F.conv2d(cat, stem.conv.weight, padding=1), bn.running_mean,
                              bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-3))
    with torch.no_grad():
        assert torch.allclose(model.backbone.backbone.stem(x), ref, atol=1e-4)
        out = model(x)
    assert out.shape == (1, 16 + 4 + 1, 8)


def test_forward_rejects_bad_input_size():
    model = YOLOX(0.33, 0.25, False).eval()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.zeros(1, 3, 50, 64))
