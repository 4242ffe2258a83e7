"""Rotation conversions with the exact numerics of the SPIN/VIBE/TCMR lineage.

* ``rot6d_to_rotmat``: SPIN's 6D convention (6 numbers = a row-major 3x2 matrix whose two
  columns are Gram-Schmidt-orthonormalised, eps 1e-6; third column = cross product).
* ``rotmat_to_axis_angle``: the kornia/torchgeometry route (rotation matrix -> quaternion with
  the four-case selection -> axis-angle), NaN -> 0, as TCMR computes ``theta``.
* ``axis_angle_to_rotmat``: the quaternion Rodrigues TCMR's pose loss uses (norm of
  ``aa + 1e-8``, half-angle quaternion, normalised quaternion -> matrix).

The forward values follow the reference formulas operation by operation; the only change is
that branches which the reference discards through a mask are fed safe values, so that
gradients stay finite at the identity rotation (the reference multiplies 0 by inf there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "rot6d_to_rotmat", "rotmat_to_quaternion", "quaternion_to_axis_angle",
    "rotmat_to_axis_angle", "quaternion_to_rotmat", "axis_angle_to_rotmat",
]


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) or (B, J*6) 6D rotations -> (M, 3, 3) matrices, M = numel / 6.

    The 6 numbers of a joint are [R00, R01, R10, R11, R20, R21] (first two columns of R,
    interleaved), as SPIN's ``decpose`` head and ``smpl_mean_params.npz`` store them.
    """
    x = x.reshape(-1, 3, 2)
    b1 = F.normalize(x[:, :, 0], dim=1, eps=1e-6)
    dot = torch.sum(b1 * x[:, :, 1], dim=1, keepdim=True)
    b2 = F.normalize(x[:, :, 1] - dot * b1, dim=-1, eps=1e-6)
    b3 = torch.cross(b1, b2, dim=1)
    return torch.stack([b1, b2, b3], dim=-1)


def rotmat_to_quaternion(rotmat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(M, 3, 3) rotation matrices -> (M, 4) quaternions (w, x, y, z), kornia's case split."""
    if rotmat.dim() != 3 or rotmat.shape[-2:] != (3, 3):
        raise ValueError(f"expected (M, 3, 3) rotation matrices, got {tuple(rotmat.shape)}")
    r = rotmat.transpose(1, 2)  # the reference works on the transpose
    r00, r01, r02 = r[:, 0, 0], r[:, 0, 1], r[:, 0, 2]
    r10, r11, r12 = r[:, 1, 0], r[:, 1, 1], r[:, 1, 2]
    r20, r21, r22 = r[:, 2, 0], r[:, 2, 1], r[:, 2, 2]

    t0 = 1 + r00 - r11 - r22
    t1 = 1 - r00 + r11 - r22
    t2 = 1 - r00 - r11 + r22
    t3 = 1 + r00 + r11 + r22
    q0 = torch.stack([r12 - r21, t0, r01 + r10, r20 + r02], -1)
    q1 = torch.stack([r20 - r02, r01 + r10, t1, r12 + r21], -1)
    q2 = torch.stack([r01 - r10, r20 + r02, r12 + r21, t2], -1)
    q3 = torch.stack([t3, r12 - r21, r20 - r02, r01 - r10], -1)

    d2 = r22 < eps
    d0_d1 = r00 > r11
    d0_nd1 = r00 < -r11
    c0 = (d2 & d0_d1)[:, None]
    c1 = (d2 & ~d0_d1)[:, None]
    c2 = (~d2 & d0_nd1)[:, None]

    q = torch.where(c0, q0, torch.where(c1, q1, torch.where(c2, q2, q3)))
    t = torch.where(c0, t0[:, None], torch.where(c1, t1[:, None],
                                                 torch.where(c2, t2[:, None], t3[:, None])))
    return q / torch.sqrt(t) * 0.5


def quaternion_to_axis_angle(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z) -> (..., 3) axis-angle (ceres/kornia formula)."""
    if quat.shape[-1] != 4:
        raise ValueError(f"expected (..., 4) quaternions, got {tuple(quat.shape)}")
    q1, q2, q3 = quat[..., 1], quat[..., 2], quat[..., 3]
    sin_sq = q1 * q1 + q2 * q2 + q3 * q3
    positive = sin_sq > 0.0
    # sqrt(0) has an infinite derivative; the reference only uses this branch where sin_sq > 0
    sin_theta = torch.sqrt(torch.where(positive, sin_sq, torch.ones_like(sin_sq)))
    cos_theta = quat[..., 0]
    two_theta = 2.0 * torch.where(cos_theta < 0.0,
                                  torch.atan2(-sin_theta, -cos_theta),
                                  torch.atan2(sin_theta, cos_theta))
    k = torch.where(positive, two_theta / sin_theta, 2.0 * torch.ones_like(sin_theta))
    return torch.stack([q1 * k, q2 * k, q3 * k], dim=-1)


def rotmat_to_axis_angle(rotmat: torch.Tensor) -> torch.Tensor:
    """(M, 3, 3) -> (M, 3) axis-angle; NaN entries become 0 exactly as in TCMR's ``theta``."""
    aa = quaternion_to_axis_angle(rotmat_to_quaternion(rotmat.reshape(-1, 3, 3)))
    return torch.where(torch.isnan(aa), torch.zeros_like(aa), aa)


def quaternion_to_rotmat(quat: torch.Tensor) -> torch.Tensor:
    """(M, 4) quaternions (w, x, y, z), normalised first -> (M, 3, 3) matrices."""
    q = quat / quat.norm(p=2, dim=1, keepdim=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    w2, x2, y2, z2 = w * w, x * x, y * y, z * z
    wx, wy, wz = w * x, w * y, w * z
    xy, xz, yz = x * y, x * z, y * z
    m = torch.stack([
        w2 + x2 - y2 - z2, 2 * xy - 2 * wz, 2 * wy + 2 * xz,
        2 * wz + 2 * xy, w2 - x2 + y2 - z2, 2 * yz - 2 * wx,
        2 * xz - 2 * wy, 2 * wx + 2 * yz, w2 - x2 - y2 + z2,
    ], dim=1)
    return m.reshape(-1, 3, 3)


def axis_angle_to_rotmat(aa: torch.Tensor) -> torch.Tensor:
    """(M, 3) axis-angle -> (M, 3, 3) via the half-angle quaternion (TCMR pose loss).

    The 1e-8 is added to every component before the norm (not to the norm), as the
    reference does, so a zero vector maps to the identity without dividing by zero.
    """
    aa = aa.reshape(-1, 3)
    angle = torch.norm(aa + 1e-8, p=2, dim=1).unsqueeze(-1)
    axis = aa / angle
    half = angle * 0.5
    quat = torch.cat([torch.cos(half), torch.sin(half) * axis], dim=1)
    return quaternion_to_rotmat(quat)
