"""TCMR loss: hand-checked values, masks, and that training a tiny model reduces it."""
from __future__ import annotations

import math

import pytest
import torch

from poselift.lifting.tcmr.smpl_model import build_spin_smpl
from poselift.synthetic.smpl import make_synthetic_smpl
from poselift.lifting.tcmr.model import TCMR
from poselift.lifting.tcmr.losses import (
    REFERENCE_DEFAULT_WEIGHTS, RELEASED_WEIGHTS, TCMRLoss, TCMRLossWeights, keypoint_2d_loss,
    keypoint_3d_loss, smpl_losses)


def test_released_weights():
    assert (RELEASED_WEIGHTS.kp_2d, RELEASED_WEIGHTS.kp_3d, RELEASED_WEIGHTS.pose,
            RELEASED_WEIGHTS.shape) == (300.0, 300.0, 60.0, 0.06)
    assert REFERENCE_DEFAULT_WEIGHTS == TCMRLossWeights(60.0, 30.0, 1.0, 0.001)


def test_2d_loss_counts_zero_confidence_in_denominator():
    pred = torch.zeros(2, 49, 2)
    tgt = torch.zeros(2, 49, 3)
    tgt[0, 5] = torch.tensor([1.0, 2.0, 0.5])   # conf 0.5 * (1 + 4)
    tgt[1, 7] = torch.tensor([3.0, 3.0, 0.0])   # zero confidence: no error, still counted
    assert keypoint_2d_loss(pred, tgt).item() == pytest.approx(2.5 / (2 * 49 * 2))


def test_3d_loss_is_hip_centred_and_uses_lsp_joints_only():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(3, 49, 3, generator=g)
    pred = gt + torch.tensor([1.0, -2.0, 0.5])   # a translation only
    pred[:, :25] += 10.0                          # OpenPose joints are ignored
    pred[:, 39:] -= 4.0                           # and so are 39..48
    assert keypoint_3d_loss(pred, gt).item() == pytest.approx(0.0, abs=1e-10)
    pred = gt.clone()
    pred[:, 25, 0] += 1.4                         # R ankle off by 1.4 in x, hips unchanged
    assert keypoint_3d_loss(pred, gt).item() == pytest.approx(1.4 ** 2 / (14 * 3), rel=1e-5)
    assert keypoint_3d_loss(pred[:0], gt[:0]).item() == 0.0


def test_pose_and_shape_losses_by_hand():
    pred = torch.zeros(1, 72)
    gt = torch.zeros(1, 72)
    gt[0, 5] = math.pi / 2                        # root: 90 deg about z
    pose, shape = smpl_losses(pred, torch.zeros(1, 10), gt, torch.full((1, 10), 2.0))
    # |I - Rz(90)|^2 = 4 over 24 joints x 9 entries
    assert pose.item() == pytest.approx(4 / (24 * 9), rel=1e-5)
    assert shape.item() == pytest.approx(4.0)


def _targets(b2, b3, r, w_smpl):
    g = torch.Generator().manual_seed(1)
    kp = lambda b: torch.cat([torch.rand(b, r, 49, 2, generator=g) * 2 - 1,
                              torch.ones(b, r, 49, 1)], -1)
    t3 = {"kp_2d": kp(b3), "kp_3d": torch.randn(b3, r, 49, 3, generator=g) * 0.3,
          "theta": torch.cat([torch.tensor([1.0, 0, 0]).expand(b3, r, 3),
                              torch.randn(b3, r, 82, generator=g) * 0.2], -1),
          "w_3d": torch.ones(b3, r), "w_smpl": torch.full((b3, r), float(w_smpl))}
    return {"kp_2d": kp(b2)}, t3


def test_total_and_masks():
    t2, t3 = _targets(2, 3, 3, w_smpl=0)
    pred = {"kp_2d": torch.zeros(5, 3, 49, 2), "kp_3d": torch.zeros(5, 3, 49, 3),
            "theta": torch.zeros(5, 3, 85)}
    loss = TCMRLoss()
    total, parts = loss(pred, t2, t3)
    assert set(parts) == {"loss_kp_2d", "loss_kp_3d"}   # w_smpl = 0: no SMPL terms at all
    real = torch.cat([t2["kp_2d"], t3["kp_2d"]])
    expect_2d = 300 * (real[..., 2:] * real[..., :2] ** 2).mean()
    torch.testing.assert_close(parts["loss_kp_2d"], expect_2d)
    torch.testing.assert_close(total, parts["loss_kp_2d"] + parts["loss_kp_3d"])
    t3["w_smpl"][0] = 1.0
    t3["w_3d"][:] = 0.0
    _, parts = loss(pred, t2, t3)
    assert parts["loss_kp_3d"].item() == 0.0 and {"loss_pose", "loss_shape"} <= set(parts)
    torch.testing.assert_close(parts["loss_shape"],
                               0.06 * (t3["theta"][0, :, 75:] ** 2).mean())
    with pytest.raises(ValueError, match="do not match"):
        loss({"kp_2d": torch.zeros(4, 3, 49, 2), "kp_3d": pred["kp_3d"],
              "theta": pred["theta"]}, t2, t3)


def test_a_few_adam_steps_reduce_the_loss(tmp_path):
    torch.manual_seed(0)
    smpl = build_spin_smpl(make_synthetic_smpl(tmp_path))
    model = TCMR(smpl, n_layers=1, hidden_size=8, feat_dim=32, regressor_hidden=32).train()
    for m in (model.regressor.drop1, model.regressor.drop2):
        m.p = 0.0   # deterministic descent for the test
    x = torch.randn(2, 16, 32)
    t2, t3 = _targets(1, 1, 3, w_smpl=1)
    t3["kp_3d"] = t3["kp_3d"] * 0.1
    loss_fn = TCMRLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(5):
        total, _ = loss_fn(model(x), t2, t3)
        opt.zero_grad()
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        history.append(total.item())
    assert all(b < a for a, b in zip(history, history[1:])), history
    assert history[-1] < 0.9 * history[0], history
