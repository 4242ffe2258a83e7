"""FastPose (AlphaPose SE-ResNet + DUC): key layout, width inference, strict loading, contract."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.core.checkpoints import CheckpointError
from poselift.extract.estimators.contracts import FASTPOSE_CONTRACT, FastPoseContract
from poselift.extract.estimators.fastpose import (
    FASTPOSE_VARIANTS, FastPose, fastpose_config_from_state_dict, load_alphapose, read_state_dict,
)

KEYS_JSON = Path(__file__).parent / "data" / "alphapose_fastpose_keys.json"
QUARTER = dict(stem=16, widths=(64, 128, 256, 512), duc1_out=256, duc2_out=128)

torch.set_num_threads(2)


def _quarter(num_joints: int = 17, seed: int = 0) -> FastPose:
    """Width/4 FastPose with random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    m = FastPose(num_joints, **QUARTER)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(7)
    return m.eval()


def test_key_order_and_shapes_match_reference_width_quarter() -> None:
    ref = json.loads(KEYS_JSON.read_text())["keys"]
    got = [(k, list(v.shape)) for k, v in _quarter().state_dict().items()]
    assert len(got) == 348
    assert got == [(k, s) for k, s in ref]


def test_full_width_layout_and_size_on_meta_device() -> None:
    with torch.device("meta"):
        coco = FASTPOSE_VARIANTS["fastpose_r50"](17)
        halpe = FASTPOSE_VARIANTS["fastpose_r50_convdim256"](136)
    sd = coco.state_dict()
    ref_keys = [k for k, _ in json.loads(KEYS_JSON.read_text())["keys"]]
    assert list(sd) == ref_keys  # same names at full width
    assert sd["preact.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["preact.layer4.0.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sd["preact.layer4.0.se.fc.0.weight"].shape == (2048, 2048)
    assert sd["duc1.conv.weight"].shape == (1024, 512, 3, 3)
    assert sd["duc2.conv.weight"].shape == (512, 256, 3, 3)
    assert sd["conv_out.weight"].shape == (17, 128, 3, 3)
    assert halpe.state_dict()["conv_out.weight"].shape == (136, 256, 3, 3)
    # Documented sizes count every state-dict element: 40.63 M and 42.11 M.
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 2) == 40.63
    assert round(sum(v.numel() for v in halpe.state_dict().values()) / 1e6, 2) == 42.11


@pytest.mark.parametrize("variant,layers", [("fastpose_r50", (3, 4, 6, 3)), ("fastpose_r101", (3, 4, 23, 3)),
                                            ("fastpose_r152", (3, 8, 36, 3)),
                                            ("fastpose_r50_convdim256", (3, 4, 6, 3))])
def test_width_and_depth_inference_full_width(variant: str, layers: tuple[int, ...]) -> None:
    with torch.device("meta"):
        m = FASTPOSE_VARIANTS[variant](26)
    cfg = fastpose_config_from_state_dict(m.state_dict())
    duc2 = 1024 if variant.endswith("256") else 512
    assert cfg == dict(num_joints=26, stem=64, widths=(256, 512, 1024, 2048), layers=layers,
                       duc1_out=1024, duc2_out=duc2, conv_out_in=duc2 // 4)


def test_stride_sits_in_conv2_and_se_only_in_first_blocks() -> None:
    m = _quarter()
    for s in range(1, 5):
        stage = getattr(m.preact, f"layer{s}")
        first = stage[0]
        assert first.conv1.stride == (1, 1)
        assert first.conv2.stride == ((1, 1) if s == 1 else (2, 2))
        assert first.se is not None and first.downsample is not None
        assert all(b.se is None and b.downsample is None for b in list(stage)[1:])
    bn = m.preact.layer2[0].bn2
    assert bn.momentum == 0.1 and bn.eps == 1e-5


def test_se_gates_bn3_before_residual_add() -> None:
    block = _quarter().preact.layer1[0]
    with torch.no_grad():
        block.se.fc[2].weight.zero_()
        block.se.fc[2].bias.fill_(-60.0)  # gate ~ 0: only the shortcut survives
        x = torch.randn(2, 16, 8, 6)
        expect = torch.relu(block.downsample(x))
        assert torch.allclose(block(x), expect, atol=1e-6)
        block.se.fc[2].bias.fill_(60.0)  # gate ~ 1: plain bottleneck
        out = block(x)
    main = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))))
    assert torch.allclose(out, torch.relu(main + block.downsample(x)), atol=1e-5)


def test_forward_shape() -> None:
    with torch.no_grad():
        out = _quarter(26)(torch.randn(2, 3, 256, 192))
    assert out.shape == (2, 26, 64, 48)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module"])
def test_load_reproduces_outputs(tmp_path: Path, wrap: str) -> None:
    src = _quarter(17, seed=3)
    sd = src.state_dict()
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "plain":
        obj = sd
    else:
        obj = {wrap: sd, "epoch": torch.tensor(3)}
    path = tmp_path / "final_DPG.pth"
    torch.save(obj, path)
    model = load_alphapose(path)
    assert not model.training
    assert fastpose_config_from_state_dict(sd)["widths"] == (64, 128, 256, 512)
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert torch.allclose(model(x), src(x), atol=1e-5, rtol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_load_errors_name_key_and_file(tmp_path: Path) -> None:
    sd = _quarter().state_dict()
    missing = dict(sd)
    del missing["duc2.bn.running_var"]
    p = tmp_path / "missing.pth"
    torch.save(missing, p)
    with pytest.raises(CheckpointError, match=r"missing\.pth.*duc2\.bn\.running_var"):
        load_alphapose(p)
    extra = dict(sd, **{"head.extra.weight": torch.zeros(3)})
    p = tmp_path / "extra.pth"
    torch.save(extra, p)
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected key\(s\) \['head\.extra\.weight'\]"):
        load_alphapose(p)
    bad = dict(sd)
    bad["preact.layer1.0.se.fc.0.bias"] = torch.zeros(5)
    p = tmp_path / "shape.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"shape\.pth.*preact\.layer1\.0\.se\.fc\.0\.bias"):
        load_alphapose(p)
    nostem = {k: v for k, v in sd.items() if k != "preact.conv1.weight"}
    p = tmp_path / "nostem.pth"
    torch.save(nostem, p)
    with pytest.raises(CheckpointError, match=r"nostem\.pth.*preact\.conv1\.weight"):
        load_alphapose(p)
    p = tmp_path / "ok.pth"
    torch.save(sd, p)
    with pytest.raises(ValueError, match=r"ok\.pth.*conv_out\.weight.*17.*136"):
        load_alphapose(p, num_joints=136)


class _Evil:
    def __reduce__(self):  # would call print("pwned") when unpickled
        return (print, ("pwned",))


def test_code_running_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "evil.pth"
    torch.save({"preact.conv1.weight": _Evil()}, p)
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pth.*trust=True"):
        load_alphapose(p)
    assert "pwned" not in capsys.readouterr().out
    # The explicit opt-in unpickles fully (runs the payload), then rejects the non-tensor value.
    with pytest.raises(CheckpointError, match=r"evil\.pth.*preact\.conv1\.weight"):
        read_state_dict(p, trust=True)
    assert "pwned" in capsys.readouterr().out


def test_contract_crop_box_and_normalisation() -> None:
    c = FASTPOSE_CONTRACT
    assert c.input_size == (256, 192) and c.mean == (0.406, 0.457, 0.480) and c.std is None
    # Tall box (w/h < 0.75): width grows to 0.75 h, then both x1.25, centre kept.
    box = c.crop_box(np.array([[10.0, 20.0, 40.0, 120.0]]))[0]
    w, h = box[2] - box[0], box[3] - box[1]
    assert np.isclose(h, 125.0) and np.isclose(w, 93.75) and np.isclose(w / h, 0.75)
    assert np.allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], [25.0, 70.0])
    wide = c.crop_box(np.array([[0.0, 0.0, 300.0, 100.0]]))[0]
    assert np.isclose(wide[2] - wide[0], 375.0) and np.isclose(wide[3] - wide[1], 500.0)
    img = np.full((256, 192, 3), 255, dtype=np.uint8)
    x = c.normalize(img)
    assert x.shape == (3, 256, 192)
    assert np.allclose(x[:, 0, 0], 1.0 - np.array([0.406, 0.457, 0.480]))
    attrs = c.to_attrs()
    assert json.loads(attrs["contract.bbox_scale"]) == 1.25
    assert FastPoseContract(bbox_scale=1.0).crop_box(np.array([[0, 0, 75, 100]]))[0].tolist() == [0, 0, 75, 100]
