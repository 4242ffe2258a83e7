"""TCMR / VIBE model semantics, SPIN regressor, rotation conversions (tiny sizes, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from poselift.lifting.tcmr.rotations import (
    axis_angle_to_rotmat, rot6d_to_rotmat, rotmat_to_axis_angle, rotmat_to_quaternion)
from poselift.lifting.tcmr.smpl_model import build_spin_smpl
from poselift.synthetic.smpl import make_synthetic_smpl
from poselift.lifting.tcmr.spin_regressor import H36M_TO_J14, weak_perspective_projection
from poselift.lifting.tcmr.model import TCMR, VIBE, TCMREncoder, VIBEEncoder

F = 64  # tiny feature width for model tests (released models use 2048)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_synthetic_smpl(tmp_path_factory.mktemp("smpl"))


@pytest.fixture(scope="module")
def smpl(model_dir):
    return build_spin_smpl(model_dir)


def _tcmr(smpl, seed=0):
    torch.manual_seed(seed)
    return TCMR(smpl, n_layers=2, hidden_size=8, feat_dim=F, regressor_hidden=32)


# ------------------------------------------------------------------------- rotations
def test_rot6d_spin_layout_and_orthonormality():
    r = torch.tensor(Rotation.random(5, random_state=1).as_matrix(), dtype=torch.float32)
    six = r[:, :, :2].reshape(5, 6)  # [R00, R01, R10, R11, R20, R21]
    torch.testing.assert_close(rot6d_to_rotmat(six), r, atol=1e-6, rtol=0)
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(0))
    m = rot6d_to_rotmat(x)
    torch.testing.assert_close(m.transpose(1, 2) @ m, torch.eye(3).expand(100, 3, 3),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(100), atol=1e-5, rtol=0)
    # first column is the normalised first 6D column
    torch.testing.assert_close(m[:, :, 0], x.view(-1, 3, 2)[:, :, 0]
                               / x.view(-1, 3, 2)[:, :, 0].norm(dim=1, keepdim=True))


def test_rotmat_to_axis_angle_matches_scipy_on_all_branches():
    rots = Rotation.random(500, random_state=2)
    extra = Rotation.from_rotvec([[0, 0, 0], [np.pi - 1e-3, 0, 0], [0, np.pi - 1e-3, 0],
                                  [0, 0, np.pi - 1e-3], [1.0, 2.0, -0.5]])
    mats = np.concatenate([rots.as_matrix(), extra.as_matrix()])
    aa = rotmat_to_axis_angle(torch.tensor(mats, dtype=torch.float64))
    np.testing.assert_allclose(aa.numpy(), Rotation.from_matrix(mats).as_rotvec(), atol=1e-6)
    q = rotmat_to_quaternion(torch.tensor(mats))
    np.testing.assert_allclose(q.norm(dim=1).numpy(), 1.0, atol=1e-9)
    bad = torch.full((2, 3, 3), float("nan"))
    assert torch.equal(rotmat_to_axis_angle(bad), torch.zeros(2, 3))  # NaN -> 0 as TCMR


def test_axis_angle_to_rotmat_and_finite_gradients_at_identity():
    aa = torch.tensor(Rotation.random(50, random_state=3).as_rotvec())
    np.testing.assert_allclose(axis_angle_to_rotmat(aa).numpy(),
                               Rotation.from_rotvec(aa.numpy()).as_matrix(), atol=1e-7)
    torch.testing.assert_close(axis_angle_to_rotmat(torch.zeros(1, 3)), torch.eye(3)[None])
    six = torch.tensor([1.0, 0, 0, 1, 0, 0], requires_grad=True)
    out = rotmat_to_axis_angle(rot6d_to_rotmat(six))
    assert torch.equal(out, torch.zeros(1, 3))
    out.sum().backward()
    assert torch.isfinite(six.grad).all()


def test_weak_perspective_projection_by_hand():
    cam = torch.tensor([[0.5, 0.1, -0.2]])
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.3, -0.4, 1.0]]])
    kp = weak_perspective_projection(pts, cam)
    z = 2 * 5000 / (224 * 0.5 + 1e-9)
    expect = torch.tensor([[[0.1 / z, -0.2 / z], [0.4 / (z + 1), -0.6 / (z + 1)]]]) * 5000 / 112
    torch.testing.assert_close(kp, expect)


# --------------------------------------------------------------------------- encoders
def test_tcmr_encoder_sees_the_documented_frames():
    torch.manual_seed(0)
    enc = TCMREncoder(n_layers=2, hidden_size=8, seq_len=16, feat_dim=F).eval()
    x = torch.randn(2, 16, F)
    train, scores = enc(x, is_train=True)
    fused, scores2 = enc(x, is_train=False)
    assert train.shape == (2, 3, F) and fused.shape == (2, F) and scores.shape == (2, 3)
    torch.testing.assert_close(train[:, 2], fused)
    torch.testing.assert_close(scores.sum(1), torch.ones(2))
    # past branch = gru_bef over frames 0..7, future branch = gru_aft over 15..9
    y, _ = enc.gru_bef(x[:, :8].permute(1, 0, 2))
    torch.testing.assert_close(train[:, 0], enc.linear_bef(torch.relu(y[-1])))
    y, _ = enc.gru_aft(x[:, [15, 14, 13, 12, 11, 10, 9]].permute(1, 0, 2))
    torch.testing.assert_close(train[:, 1], enc.linear_aft(torch.relu(y[-1])))
    y, _ = enc.gru_cur(x.permute(1, 0, 2))
    cur = enc.linear_cur(torch.relu(y[8]))
    slots = torch.stack([train[:, 0], cur, train[:, 1]], 1)  # [past, current, future]
    torch.testing.assert_close(fused, (slots * scores[:, :, None]).sum(1))
    # frame 8 reaches only the bidirectional branch
    x2 = x.clone()
    x2[:, 8] += 1.0
    t2, _ = enc(x2, is_train=True)
    torch.testing.assert_close(t2[:, :2], train[:, :2])
    assert not torch.allclose(t2[:, 2], train[:, 2])


def test_vibe_encoder_is_causal_and_residual():
    torch.manual_seed(0)
    enc = VIBEEncoder(n_layers=2, hidden_size=8, add_linear=True, feat_dim=F)
    x = torch.randn(2, 5, F)
    y = enc(x)
    g, _ = enc.gru(x.permute(1, 0, 2))
    torch.testing.assert_close(y, (enc.linear(torch.relu(g)) + x.permute(1, 0, 2))
                               .permute(1, 0, 2))
    x2 = x.clone()
    x2[:, 3:] = 0
    torch.testing.assert_close(enc(x2)[:, :3], y[:, :3])  # unidirectional: no future
    assert VIBEEncoder(1, 8, add_linear=False, use_residual=True, feat_dim=F).linear is None


# ------------------------------------------------------------------------ full models
def test_tcmr_outputs_eval_and_train(smpl):
    model = _tcmr(smpl).eval()
    x = torch.randn(3, 16, F, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        tr = model(x, is_train=True)  # eval mode -> no dropout, so fused == eval output
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"theta": (3, 85), "verts": (3, 6890, 3), "kp_2d": (3, 49, 2),
                      "kp_3d": (3, 49, 3), "rotmat": (3, 24, 3, 3), "scores": (3, 3)}
    assert tr["theta"].shape == (3, 3, 85) and tr["verts"].shape == (3, 3, 6890, 3)
    for k in ("theta", "verts", "kp_2d", "kp_3d", "rotmat"):
        torch.testing.assert_close(tr[k][:, 2], out[k], atol=1e-5, rtol=1e-5)
    # theta = [cam, axis-angle of rotmat, betas]; kp_2d = projection of kp_3d with cam
    torch.testing.assert_close(axis_angle_to_rotmat(out["theta"][:, 3:75].reshape(-1, 3)),
                               out["rotmat"].reshape(-1, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["kp_2d"],
                               weak_perspective_projection(out["kp_3d"], out["theta"][:, :3]))
    verts, joints = smpl(out["theta"][:, 75:], out["rotmat"])
    torch.testing.assert_close(out["verts"], verts)
    model.train()
    assert model(x)["theta"].shape == (3, 3, 85)  # train mode defaults to the triple


def test_h36m_regressor_gives_14_lsp_joints(smpl, model_dir):
    model = _tcmr(smpl).eval()
    reg = torch.tensor(np.load(model_dir / "J_regressor_h36m.npy"), dtype=torch.float32)
    x = torch.randn(2, 16, F)
    with torch.no_grad():
        out = model(x, J_regressor=reg)
        model.set_eval_regressor(reg)
        stored = model(x)
    assert out["kp_3d"].shape == (2, 14, 3) and out["kp_2d"].shape == (2, 14, 2)
    expect = torch.einsum("jv,bvc->bjc", reg, out["verts"])[:, list(H36M_TO_J14)]
    torch.testing.assert_close(out["kp_3d"], expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(stored["kp_3d"], out["kp_3d"])
    with torch.no_grad():
        assert model(x, is_train=True)["kp_3d"].shape == (2, 3, 49, 3)  # ignored in training


def test_vibe_per_frame_outputs(smpl):
    torch.manual_seed(0)
    model = VIBE(smpl, n_layers=1, hidden_size=8, feat_dim=F, regressor_hidden=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 5, F))
    assert out["theta"].shape == (2, 5, 85) and out["verts"].shape == (2, 5, 6890, 3)
    assert out["kp_3d"].shape == (2, 5, 49, 3) and out["rotmat"].shape == (2, 5, 24, 3, 3)
    assert "scores" not in out


def test_bad_inputs_raise_clear_errors(smpl):
    model = _tcmr(smpl).eval()
    with pytest.raises(ValueError, match=r"feature width mismatch: model expects D=64, got 32"):
        model(torch.randn(1, 16, 32))
    with pytest.raises(ValueError, match=r"expects T=16 frames, got 8"):
        model(torch.randn(1, 8, F))
    x = torch.randn(3, 16, F)
    x[1, 4, 7] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf \(1 values; windows \[1\]\)"):
        model(x)
    with pytest.raises(ValueError, match=r"shape \(N, T, 64\)"):
        model(torch.randn(16, F))


def test_regressor_iterative_error_feedback_by_hand(smpl):
    model = _tcmr(smpl).eval()
    reg = model.regressor
    x = torch.randn(2, F)
    pose, shape, cam = (reg.init_pose.expand(2, -1), reg.init_shape.expand(2, -1),
                        reg.init_cam.expand(2, -1))
    for _ in range(3):  # fc1 -> fc2 with no non-linearity, heads added to the estimate
        h = reg.fc2(reg.fc1(torch.cat([x, pose, shape, cam], 1)))
        pose, shape, cam = reg.decpose(h) + pose, reg.decshape(h) + shape, reg.deccam(h) + cam
    with torch.no_grad():
        out = reg(x)
    torch.testing.assert_close(out["theta"][:, :3], cam)
    torch.testing.assert_close(out["theta"][:, 75:], shape)
    torch.testing.assert_close(out["rotmat"], rot6d_to_rotmat(pose).view(2, 24, 3, 3))


def test_spin_regressor_heads_load_through_the_strict_loader(tmp_path, smpl):
    from poselift.core.checkpoints import CheckpointError
    from poselift.lifting.tcmr.train import _load_spin_regressor

    src, dst = _tcmr(smpl, seed=1), _tcmr(smpl, seed=2)
    heads = {k: v for k, v in src.regressor.state_dict().items()
             if k.split(".")[0] in ("fc1", "fc2", "decpose", "decshape", "deccam")}
    # an HMR file also holds the backbone and the mean params, which are not the heads'
    torch.save({"model": {"module.conv1.weight": torch.zeros(2, 3, 1, 1),
                          **{f"module.{k}": v for k, v in heads.items()}}}, tmp_path / "hmr.pt")
    _load_spin_regressor(dst, str(tmp_path / "hmr.pt"))
    for k, v in heads.items():
        assert torch.equal(dst.regressor.state_dict()[k], v), k
    del heads["deccam.bias"]
    heads["fc2.weight"] = torch.zeros(3, 3)
    torch.save({"model": heads}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: missing key\(s\) \['deccam\.bias'\]; "
                                              r"shape mismatch \['fc2\.weight' has shape \(3, 3\)"):
        _load_spin_regressor(dst, str(tmp_path / "bad.pt"))
