"""Linear blend skinning for rotation-matrix input, same numbers as ``smplx.lbs`` (pose2rot
False) with the last step rewritten for speed.

smplx forms a 4x4 transform per vertex with a batched matmul of (B, V, 24) weights, then
applies it with ``matmul`` of (B, V, 4, 4) by (B, V, 4, 1): B * V products of 4x4 matrices,
which torch runs as a bmm over tiny matrices (forward and backward: ~2/3 of a TCMR training
step on the CPU, profiled). Here the blended transforms come from ONE (B * 12, 24) x (24, V)
matmul into coordinate-major planes and are applied with three multiply-adds over (B, 3, V),
which vectorise; the homogeneous row is never formed. Same sums in the same order as smplx
(x, y, z, then translation), so the vertices agree to float rounding.
"""
from __future__ import annotations

import torch
from smplx.lbs import batch_rigid_transform, blend_shapes, vertices2joints

__all__ = ["lbs_rotmat"]


def lbs_rotmat(betas: torch.Tensor, rotmat: torch.Tensor, v_template: torch.Tensor,
               shapedirs: torch.Tensor, posedirs: torch.Tensor, J_regressor: torch.Tensor,
               parents: torch.Tensor, lbs_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """betas (B, L), rotmat (B, J, 3, 3) -> vertices (B, V, 3), posed joints (B, J, 3).

    Arguments as in ``smplx.lbs.lbs``: v_template (V, 3), shapedirs (V, 3, L), posedirs
    ((J - 1) * 9, V * 3), J_regressor (J, V), parents (J,), lbs_weights (V, J)."""
    b, nj = rotmat.shape[0], rotmat.shape[1]
    v_shaped = v_template + blend_shapes(betas, shapedirs)
    joints = vertices2joints(J_regressor, v_shaped)
    ident = torch.eye(3, dtype=rotmat.dtype, device=rotmat.device)
    pose_feature = (rotmat[:, 1:] - ident).reshape(b, -1)
    v_posed = v_shaped + (pose_feature @ posedirs).view(b, -1, 3)
    joints_posed, A = batch_rigid_transform(rotmat, joints, parents, dtype=rotmat.dtype)
    # Rows 0..2 of every joint's 4x4 transform as (B * 12, J), blended by one matmul into
    # coordinate-major planes t[b, i, k, v] (B, 3, 4, V): every op below is a contiguous
    # (B, 3, V) multiply-add, no reduction over a size-3 axis.
    a12 = A[:, :, :3, :].permute(0, 2, 3, 1).reshape(b * 12, nj)
    t = (a12 @ lbs_weights.t()).view(b, 3, 4, -1)
    # unbind, not slicing: the backward of 4 slices would zero-fill 4 full-size gradients.
    tx, ty, tz, tt = t.unbind(2)
    vx, vy, vz = v_posed.transpose(1, 2).unsqueeze(1).unbind(2)  # (B, 1, V) each
    out = torch.addcmul(torch.addcmul(torch.addcmul(tt, tx, vx), ty, vy), tz, vz)
    return out.transpose(1, 2), joints_posed
