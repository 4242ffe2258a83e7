"""HRNet backbone: official pose_hrnet key layout, strict width-inferring loader, safe loading."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from poselift.extract.estimators.hrnet import (BACKBONES, CheckpointError, HRNet, infer_hrnet_config, load_hrnet,
                                               read_checkpoint)


def _tiny(**kw) -> HRNet:
    torch.manual_seed(0)
    m = HRNet(kw.pop("width", 8), kw.pop("num_joints", 5), stage_modules=(1, 2, 1), num_blocks=2, **kw)
    # Non-trivial BN statistics so a wrong load would change outputs.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def test_w48_official_key_names_and_shapes():
    m = HRNet(48)
    sd = m.state_dict()
    expected = {
        "conv1.weight": (64, 3, 3, 3), "bn2.running_var": (64,),
        "layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.3.bn3.weight": (256,), "transition1.0.0.weight": (48, 256, 3, 3),
        "transition1.1.0.0.weight": (96, 256, 3, 3), "transition1.1.0.1.num_batches_tracked": (),
        "stage2.0.branches.1.3.conv2.weight": (96, 96, 3, 3),
        "stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1),
        "stage2.0.fuse_layers.1.0.0.0.weight": (96, 48, 3, 3),
        "transition2.2.0.0.weight": (192, 96, 3, 3),
        "stage3.3.fuse_layers.2.0.0.0.weight": (48, 48, 3, 3),
        "stage3.3.fuse_layers.2.0.1.0.weight": (192, 48, 3, 3),
        "stage3.3.fuse_layers.0.2.1.running_mean": (48,),
        "transition3.3.0.0.weight": (384, 192, 3, 3),
        "stage4.2.branches.3.3.bn2.bias": (384,),
        "stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
        "stage4.1.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
        "final_layer.weight": (17, 48, 1, 1), "final_layer.bias": (17,),
    }
    for k, shape in expected.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, k
    keys = list(sd)
    # Equal-width transitions are None (no keys); the last stage-4 module fuses to branch 0 only.
    assert not any(k.startswith(("transition2.0.", "transition2.1.", "transition3.2.")) for k in keys)
    assert not any(k.startswith("stage4.2.fuse_layers.1.") for k in keys)
    assert any(k.startswith("stage4.1.fuse_layers.3.") for k in keys)
    order = []
    for k in keys:
        top = k.split(".")[0]
        if top not in order:
            order.append(top)
    assert order == ["conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2", "stage3",
                     "transition3", "stage4", "final_layer"]
    assert len(keys) == 1754
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - 63.6e6) < 0.05e6  # official pose_hrnet_w48: 63.6 M
    assert sum(p.numel() for p in BACKBONES["hrnet_w32"]().parameters()) == pytest.approx(28.5e6, abs=0.05e6)


def test_forward_shapes_and_feature_head_consistency():
    m = _tiny()
    x = torch.randn(2, 3, 64, 96)
    hm, feat = m.forward_features(x)
    assert hm.shape == (2, 5, 16, 24) and feat.shape == (2, 8, 16, 24)
    torch.testing.assert_close(m.final_layer(feat), hm)
    torch.testing.assert_close(m(x), hm)


def test_load_roundtrip_infers_config(tmp_path):
    m = _tiny(final_conv_kernel=3)
    path = tmp_path / "pose_hrnet.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}, "epoch": 3,
                "perf": np.float64(0.7)}, path)
    cfg = infer_hrnet_config(m.state_dict())
    assert cfg == {"width": 8, "num_joints": 5, "final_conv_kernel": 3, "stage_modules": (1, 2, 1), "num_blocks": 2}
    loaded = load_hrnet(path).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), m(x))
    # FAMI-Pose layout: every key under 'hrnet.'
    fami = {"hrnet." + k: v for k, v in m.state_dict().items()}
    torch.testing.assert_close(load_hrnet(fami).eval()(x), m(x))


def test_strict_errors_name_file_and_key(tmp_path):
    sd = _tiny().state_dict()
    path = tmp_path / "broken.pth"
    bad = dict(sd)
    del bad["stage3.1.branches.2.1.conv1.weight"]
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth.*missing key.*stage3\.1\.branches\.2\.1\.conv1\.weight"):
        load_hrnet(path)
    extra = dict(sd, **{"head.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected key.*head\.extra"):
        load_hrnet(extra)
    shaped = dict(sd)
    shaped["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*layer1\.0\.conv2\.weight"):
        load_hrnet(shaped)
    with pytest.raises(CheckpointError, match="transition1.0.0.weight"):
        load_hrnet({"conv1.weight": torch.zeros(64, 3, 3, 3)})


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but any callable must be refused


def test_code_running_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _tiny().state_dict(), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*refused"):
        load_hrnet(path)
    obj = read_checkpoint(path, trust=True)  # explicit opt-in unpickles fully
    assert isinstance(obj["payload"], str)
