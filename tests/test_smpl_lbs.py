"""The fast skinning (lifting/tcmr/smpl_lbs.py) gives smplx's vertices, joints and gradients."""
from __future__ import annotations

import smplx
import torch
from smplx.lbs import batch_rodrigues

from poselift.lifting.tcmr.smpl_model import build_spin_smpl
from poselift.synthetic.smpl import make_synthetic_smpl


def _smplx_reference(smpl, betas, rot):
    out = smplx.SMPL.forward(smpl, betas=betas, body_pose=rot[:, 1:],
                             global_orient=rot[:, 0].unsqueeze(1), pose2rot=False)
    extra = torch.einsum("bik,ji->bjk", out.vertices, smpl.J_regressor_extra)
    return out.vertices, torch.cat([out.joints, extra], dim=1)[:, smpl.joint_map]


def test_fast_lbs_matches_smplx_values_and_gradients(tmp_path):
    smpl = build_spin_smpl(make_synthetic_smpl(tmp_path / "smpl"))
    g = torch.Generator().manual_seed(0)
    betas = torch.randn(2, 10, generator=g)
    rot = batch_rodrigues(torch.randn(2 * 24, 3, generator=g) * 0.7).view(2, 24, 3, 3)
    w_v, w_j = torch.randn(2, 6890, 3, generator=g), torch.randn(2, 49, 3, generator=g)
    res = []
    for fn in (_smplx_reference, lambda m, b, r: m(b, r)):
        b, r = betas.clone().requires_grad_(), rot.clone().requires_grad_()
        v, j = fn(smpl, b, r)
        ((v * w_v).sum() + (j * w_j).sum()).backward()
        res.append((v.detach(), j.detach(), b.grad, r.grad))
    assert res[0][0].shape == (2, 6890, 3) and res[1][1].shape == (2, 49, 3)
    for want, got in zip(*res):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
