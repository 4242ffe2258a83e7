"""ResNet backbones: torchvision layout parity, strict loaders (torchvision, SPIN/HMR), safe unpickling."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.extract.backbones import (BACKBONES, CheckpointError, ResNet, file_sha256, load_checkpoint,
                                        load_spin_backbone, load_torchvision_resnet)
from poselift.extract.contracts import PreprocessContract
from poselift.extract.features import BackboneRunner

torch.set_num_threads(1)


def test_full_resnet50_matches_torchvision_layout() -> None:
    m = ResNet(50, 64, num_classes=1000)
    sd = m.state_dict()
    assert sum(p.numel() for p in m.parameters()) == 25_557_032
    assert len(sd) == 320
    keys = list(sd)
    assert keys[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked"]
    for k, shape in {"layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                     "layer1.0.downsample.1.running_var": (256,), "layer2.0.conv2.weight": (128, 128, 3, 3),
                     "layer3.5.bn3.weight": (1024,), "layer4.2.conv3.weight": (2048, 512, 1, 1),
                     "fc.weight": (1000, 2048), "fc.bias": (1000,)}.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layer1.1.downsample.0.weight" not in sd and "layer3.6.conv1.weight" not in sd
    # v1.5: the stride of a down-sampling bottleneck is on its 3x3 conv
    assert m.layer2[0].conv2.stride == (2, 2) and m.layer2[0].conv1.stride == (1, 1)
    assert m.feature_dim == 2048 and ResNet(50, 64).fc is None


@pytest.mark.parametrize("depth,params,entries", [(18, 11_689_512, 122), (34, 21_797_672, 218)])
def test_shallow_depths(depth: int, params: int, entries: int) -> None:
    m = ResNet(depth, 64, 1000)
    assert sum(p.numel() for p in m.parameters()) == params and len(m.state_dict()) == entries
    assert m.feature_dim == 512


def test_reduced_width_feature_dim_and_pooling() -> None:
    torch.manual_seed(0)
    m = BACKBONES["resnet50"](base_width=8).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = m(x)
        trunk = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    assert y.shape == (2, 256) and m.feature_dim == 256  # 8 * 8 * 4
    torch.testing.assert_close(y, trunk.mean((2, 3)))
    assert BACKBONES["resnet18"](base_width=8).feature_dim == 64


def _tiny(depth: int = 50, classes: int | None = 10) -> ResNet:
    torch.manual_seed(1)
    m = ResNet(depth, 8, classes)
    for mod in m.modules():  # non-trivial BN statistics so a wrong mapping would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def _feats(m: ResNet, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return m(x)


def test_torchvision_loader_round_trip(tmp_path: Path) -> None:
    src = _tiny(50)
    p = tmp_path / "resnet50-tiny.pth"
    torch.save(src.state_dict(), p)
    m = load_torchvision_resnet(p)
    assert (m.depth, m.base_width, m.fc, m.training) == (50, 8, None, False)
    torch.testing.assert_close(_feats(m), _feats(src), rtol=0, atol=0)
    assert m.load_info["sha256"] == file_sha256(p) and m.load_info["ignored_keys"] == ["fc.weight", "fc.bias"]
    with_fc = load_torchvision_resnet(p, keep_fc=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_fc.logits(x), src.logits(x))
    # pre-0.4.1 checkpoints (the original torchvision files) have no num_batches_tracked
    old = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.testing.assert_close(_feats(load_torchvision_resnet(old)), _feats(src))
    r18 = _tiny(18, None)
    assert load_torchvision_resnet(r18.state_dict()).depth == 18


def test_torchvision_loader_is_strict_and_names_keys(tmp_path: Path) -> None:
    sd = _tiny(50).state_dict()
    p = tmp_path / "broken.pth"
    torch.save({k: v for k, v in sd.items() if k != "layer3.2.bn2.running_mean"}, p)
    with pytest.raises(CheckpointError, match=r"broken.pth: .*missing key\(s\) \['layer3.2.bn2.running_mean'\]"):
        load_torchvision_resnet(p)
    extra = dict(sd, **{"head.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) \['head.weight'\]"):
        load_torchvision_resnet(extra)
    assert load_torchvision_resnet(extra, strict=False).load_info["ignored_keys"] == ["fc.weight", "fc.bias",
                                                                                      "head.weight"]
    bad = dict(sd, **{"layer1.0.conv2.weight": torch.zeros(8, 8, 1, 1)})
    with pytest.raises(CheckpointError, match=r"shape mismatch \['layer1.0.conv2.weight' has shape \(8, 8, 1, 1\)"):
        load_torchvision_resnet(bad)
    with pytest.raises(CheckpointError, match="block counts"):
        load_torchvision_resnet({k: v for k, v in sd.items() if not k.startswith("layer3.5.")})


def _spin_checkpoint(trunk: ResNet) -> dict:
    """The SPIN layout: {'model': HMR state dict, 'optimizer': ..., epoch counters}."""
    model = dict(trunk.state_dict())
    d = trunk.feature_dim
    model.update({"fc1.weight": torch.randn(1024, d + 157), "fc1.bias": torch.zeros(1024),
                  "fc2.weight": torch.randn(1024, 1024), "fc2.bias": torch.zeros(1024),
                  "decpose.weight": torch.zeros(144, 1024), "decpose.bias": torch.zeros(144),
                  "decshape.weight": torch.zeros(10, 1024), "decshape.bias": torch.zeros(10),
                  "deccam.weight": torch.zeros(3, 1024), "deccam.bias": torch.zeros(3),
                  "init_pose": torch.zeros(1, 144), "init_shape": torch.zeros(1, 10),
                  "init_cam": torch.zeros(1, 3), "smpl.betas": torch.zeros(1, 10)})
    return {"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]},
            "epoch": 3, "batch_idx": 10, "total_step_count": 1234}


def test_spin_backbone_loader(tmp_path: Path) -> None:
    trunk = _tiny(50, None)
    p = tmp_path / "spin_model_checkpoint.pth.tar"
    torch.save(_spin_checkpoint(trunk), p)
    m = load_spin_backbone(p)
    torch.testing.assert_close(_feats(m), _feats(trunk), rtol=0, atol=0)
    ignored = set(m.load_info["ignored_keys"])
    assert {"fc1.weight", "decpose.bias", "init_cam", "smpl.betas"} <= ignored and len(ignored) == 14
    ck = _spin_checkpoint(trunk)
    ck["model"]["cam_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) \['cam_head.weight'\]"):
        load_spin_backbone(ck)
    ck = _spin_checkpoint(trunk)
    del ck["model"]["layer4.1.conv3.weight"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['layer4.1.conv3.weight'\]"):
        load_spin_backbone(ck)
    with pytest.raises(CheckpointError, match="SPIN/HMR uses ResNet-50"):
        load_spin_backbone({"model": _tiny(18, None).state_dict()})
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) \['fc1.weight'"):
        load_torchvision_resnet(p)  # the regressor is not silently dropped by the generic loader


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless stand-in for a code-running pickle


def test_unsafe_pickles_are_refused_unless_trusted(tmp_path: Path) -> None:
    p = tmp_path / "evil.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "payload": _RunsCode()}, p)
    with pytest.raises(CheckpointError, match=r"evil.pth: refused to unpickle"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="evil.pth: refused"):
        load_spin_backbone(p)
    assert load_checkpoint(p, trust=True)["payload"] == os.getcwd()
    # numpy scalars/arrays as in TCMR/VIBE checkpoints are on the allow-list
    q = tmp_path / "with_numpy.pth.tar"
    torch.save({"performance": np.float64(52.7), "arr": np.arange(3.0)}, q)
    got = load_checkpoint(q)
    assert got["performance"] == 52.7 and got["arr"].tolist() == [0.0, 1.0, 2.0]
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: checkpoint file is empty"):
        load_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")


def test_runner_matches_plain_forward_and_compile_fallback() -> None:
    m = _tiny(50, None)
    c = PreprocessContract(crop_size=32)
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        want = m(torch.from_numpy(c.normalize_numpy(crops))).numpy()
    got = BackboneRunner(m, c, "cpu")(crops)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("inductor exploded")

    r = BackboneRunner(m, c, "cpu")
    r._fn, r._compiled = Boom(), True  # what a failing torch.compile looks like at call time
    with pytest.warns(UserWarning, match="torch.compile failed .*falling back to eager"):
        np.testing.assert_allclose(r(crops), want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runner_cuda_fp16_close_to_cpu() -> None:
    m = _tiny(50, None)
    c = PreprocessContract(crop_size=64)
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    cpu = BackboneRunner(m, c, "cpu")(crops)
    gpu = BackboneRunner(_tiny(50, None), c, "cuda")(crops.pin_memory())
    np.testing.assert_allclose(gpu, cpu, rtol=2e-2, atol=2e-2)
