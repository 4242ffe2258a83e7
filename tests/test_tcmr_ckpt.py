"""load_tcmr on checkpoints written in the released TCMR/VIBE layout (tiny hidden sizes)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.synthetic.smpl import make_synthetic_smpl
from poselift.lifting.tcmr.model import TCMR, VIBE
from poselift.lifting.tcmr.interop import CheckpointError, infer_tcmr_config, load_tcmr

KEYS_JSON = Path(__file__).parent / "data" / "tcmr_state_dict_keys.json"  # copy of shared/formats
D = 2048  # released feature width; GRUs are tiny (hidden 16) so this stays cheap


def ref_tcmr_shapes(h: int, layers: int = 2, d: int = D) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a TCMR gen_state_dict, following the released layout."""
    s: dict[str, tuple[int, ...]] = {}
    for gru, bidir in (("gru_cur", True), ("gru_bef", False), ("gru_aft", False)):
        for k in range(layers):
            inp = d if k == 0 else (2 * h if bidir else h)
            for sfx in ([""] + (["_reverse"] if bidir else [])):
                s[f"encoder.{gru}.weight_ih_l{k}{sfx}"] = (3 * h, inp)
                s[f"encoder.{gru}.weight_hh_l{k}{sfx}"] = (3 * h, h)
                s[f"encoder.{gru}.bias_ih_l{k}{sfx}"] = (3 * h,)
                s[f"encoder.{gru}.bias_hh_l{k}{sfx}"] = (3 * h,)
    for name, inp in (("cur", 2 * h), ("bef", h), ("aft", h)):
        s[f"encoder.linear_{name}.weight"], s[f"encoder.linear_{name}.bias"] = (d, inp), (d,)
    for name, o, i in (("fc", 256, d), ("attention.0", 256, 768), ("attention.2", 256, 256),
                       ("attention.4", 3, 256)):
        s[f"encoder.attention.{name}.weight"], s[f"encoder.attention.{name}.bias"] = (o, i), (o,)
    s.update({"regressor.init_pose": (1, 144), "regressor.init_shape": (1, 10),
              "regressor.init_cam": (1, 3)})
    for name, o, i in (("fc1", 1024, d + 157), ("fc2", 1024, 1024), ("decpose", 144, 1024),
                       ("decshape", 10, 1024), ("deccam", 3, 1024)):
        s[f"regressor.{name}.weight"], s[f"regressor.{name}.bias"] = (o, i), (o,)
    s.update({"regressor.smpl.betas": (64, 10), "regressor.smpl.global_orient": (64, 3),
              "regressor.smpl.body_pose": (64, 69), "regressor.smpl.shapedirs": (6890, 3, 10),
              "regressor.smpl.faces_tensor": (13776, 3), "regressor.smpl.v_template": (6890, 3),
              "regressor.smpl.J_regressor": (24, 6890), "regressor.smpl.posedirs": (207, 20670),
              "regressor.smpl.parents": (24,), "regressor.smpl.lbs_weights": (6890, 24),
              "regressor.smpl.J_regressor_extra": (9, 6890),
              "regressor.smpl.vertex_joint_selector.extra_joints_idxs": (21,)})
    return s


def _random_sd(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shp in shapes.items():
        if k.endswith(("parents", "faces_tensor", "extra_joints_idxs")):
            out[k] = torch.zeros(shp, dtype=torch.long)
        else:
            out[k] = torch.randn(shp, generator=g) * 0.02
    out["regressor.init_pose"] = torch.tensor([1.0, 0, 0, 1, 0, 0]).repeat(24)[None]
    out["regressor.init_cam"] = torch.tensor([[0.9, 0.05, -0.02]])
    return out


def _save(path, sd):
    torch.save({"epoch": 7, "gen_state_dict": sd, "performance": np.float64(52.7),
                "gen_optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0]}]},
                "disc_motion_state_dict": {}, "disc_motion_optimizer": {}}, path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_synthetic_smpl(tmp_path_factory.mktemp("smpl"))


@pytest.fixture(scope="module")
def tcmr_ckpt(tmp_path_factory):
    sd = _random_sd(ref_tcmr_shapes(16))
    return _save(tmp_path_factory.mktemp("ck") / "tcmr_model.pth.tar", sd), sd


def test_reference_layout_matches_the_published_key_list():
    ref = json.loads(KEYS_JSON.read_text())["gen_state_dict"]
    assert {k: tuple(v[0]) for k, v in ref.items()} == ref_tcmr_shapes(1024)


def test_load_tcmr_round_trip_and_outputs(tcmr_ckpt, model_dir):
    path, sd = tcmr_ckpt
    model = load_tcmr(path, model_dir)
    assert isinstance(model, TCMR) and not model.training
    own = model.state_dict()
    for k, v in sd.items():
        if not k.startswith("regressor.smpl."):
            assert torch.equal(own[k], v), k
    assert model.encoder.gru_cur.num_layers == 2 and model.encoder.gru_cur.hidden_size == 16
    x = torch.randn(2, 16, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a["theta"].shape == (2, 85) and a["scores"].shape == (2, 3)
    assert torch.equal(a["theta"], b["theta"])  # eval: deterministic
    with torch.no_grad():
        h36 = load_tcmr(path, model_dir, J_regressor="h36m")(x)
    assert h36["kp_3d"].shape == (2, 14, 3)
    torch.testing.assert_close(h36["theta"], a["theta"])


def test_bad_inputs_to_a_loaded_model(tcmr_ckpt, model_dir):
    model = load_tcmr(tcmr_ckpt[0], model_dir)
    with pytest.raises(ValueError, match="model expects D=2048, got 1024"):
        model(torch.randn(1, 16, 1024))
    with pytest.raises(ValueError, match="expects T=16 frames, got 12"):
        model(torch.randn(1, 12, D))
    x = torch.randn(1, 16, D)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(x)


def test_vibe_checkpoint_is_detected(tmp_path, model_dir):
    h = 16
    shapes = {k: v for k, v in ref_tcmr_shapes(h).items() if not k.startswith("encoder.")}
    for k in range(2):
        inp = D if k == 0 else h
        shapes.update({f"encoder.gru.weight_ih_l{k}": (3 * h, inp),
                       f"encoder.gru.weight_hh_l{k}": (3 * h, h),
                       f"encoder.gru.bias_ih_l{k}": (3 * h,), f"encoder.gru.bias_hh_l{k}": (3 * h,)})
    shapes.update({"encoder.linear.weight": (D, h), "encoder.linear.bias": (D,)})
    sd = _random_sd(shapes)
    cfg = infer_tcmr_config(sd)
    assert cfg.model == "vibe" and cfg.kwargs["add_linear"] and not cfg.kwargs["bidirectional"]
    model = load_tcmr(_save(tmp_path / "vibe_model_wo_3dpw.pth.tar", sd), model_dir)
    assert isinstance(model, VIBE) and model.encoder.use_residual
    with torch.no_grad():
        assert model(torch.randn(1, 4, D))["theta"].shape == (1, 4, 85)


def test_strict_key_errors_name_the_key(tmp_path, tcmr_ckpt, model_dir):
    sd = dict(tcmr_ckpt[1])
    extra = dict(sd, **{"encoder.gru.weight_ih_l0": torch.zeros(3, D)})
    with pytest.raises(CheckpointError, match=r"x\.pth\.tar: unexpected key\(s\) \['encoder\.gru\."):
        load_tcmr(_save(tmp_path / "x.pth.tar", extra), model_dir)
    missing = {k: v for k, v in sd.items() if k != "encoder.linear_aft.bias"}
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['encoder\.linear_aft\.bias'\]"):
        load_tcmr(_save(tmp_path / "y.pth.tar", missing), model_dir)
    wrong = dict(sd, **{"encoder.attention.fc.bias": torch.zeros(255)})
    with pytest.raises(CheckpointError, match=r"'encoder\.attention\.fc\.bias' has shape"):
        load_tcmr(_save(tmp_path / "z.pth.tar", wrong), model_dir)


def test_missing_body_model_files_are_named(tcmr_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SMPL_NEUTRAL\.pkl .*missing in"):
        load_tcmr(tcmr_ckpt[0], tmp_path)


class _Hostile:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_safety(tmp_path, tcmr_ckpt, model_dir):
    bad = tmp_path / "bad.pth.tar"
    torch.save({"gen_state_dict": tcmr_ckpt[1], "performance": _Hostile()}, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pth\.tar: refused to unpickle"):
        load_tcmr(bad, model_dir)
    assert isinstance(load_tcmr(bad, model_dir, trust_pickle=True), TCMR)  # explicit opt-in


def test_numpy1_scalar_global_is_allowed(tmp_path, tcmr_ckpt, model_dir):
    """Released files were pickled under numpy 1 (global numpy.core.multiarray.scalar)."""
    legacy = tmp_path / "legacy.pth.tar"
    torch.save({"gen_state_dict": tcmr_ckpt[1], "performance": np.float64(1.5)}, legacy,
               _use_new_zipfile_serialization=False)
    raw = legacy.read_bytes()
    assert b"numpy._core.multiarray" in raw
    legacy.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert isinstance(load_tcmr(legacy, model_dir), TCMR)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_outputs_match_cpu(tcmr_ckpt, model_dir):
    x = torch.randn(2, 16, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cpu = load_tcmr(tcmr_ckpt[0], model_dir, J_regressor="h36m")(x)
        gpu = load_tcmr(tcmr_ckpt[0], model_dir, J_regressor="h36m",
                        map_location="cuda")(x.cuda())
    for k in ("theta", "verts", "kp_3d", "kp_2d", "rotmat", "scores"):
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], atol=1e-4, rtol=1e-4)
