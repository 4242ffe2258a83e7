"""SPIN/HMR iterative-error-feedback SMPL regressor, as used by VIBE and TCMR.

Parameter and buffer names equal the reference (``fc1, fc2, decpose, decshape, deccam,
init_pose, init_shape, init_cam, smpl``) so a ``regressor.*`` state dict maps 1:1.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from poselift.core.dropout import FastDropout
from poselift.lifting.tcmr.rotations import rot6d_to_rotmat, rotmat_to_axis_angle
from poselift.lifting.tcmr.smpl_model import SPINSMPL

__all__ = ["Regressor", "weak_perspective_projection", "H36M_TO_J17", "H36M_TO_J14",
           "FOCAL_LENGTH", "CROP_SIZE", "NPOSE"]

# Rows of SPIN's J_regressor_h36m -> LSP-14 (+ pelvis, spine, head) order.
H36M_TO_J17 = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9)
H36M_TO_J14 = H36M_TO_J17[:14]
FOCAL_LENGTH = 5000.0
CROP_SIZE = 224.0
NPOSE = 24 * 6


def weak_perspective_projection(joints: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Project (B, J, 3) joints with weak-perspective cameras (B, 3) = (s, tx, ty).

    The camera becomes a translation [tx, ty, 2*f / (224*s + 1e-9)] with focal 5000, identity
    rotation and principal point 0; pixels are divided by 112 so crops span [-1, 1].
    Returns (B, J, 2).
    """
    cam_t = torch.stack([cam[:, 1], cam[:, 2],
                         2 * FOCAL_LENGTH / (CROP_SIZE * cam[:, 0] + 1e-9)], dim=-1)
    pts = joints + cam_t.unsqueeze(1)
    pts = pts / pts[:, :, -1].unsqueeze(-1)
    return (pts[:, :, :2] * FOCAL_LENGTH) / (CROP_SIZE / 2.0)


class Regressor(nn.Module):
    """Feature (B, D) -> SMPL parameters, mesh and joints by 3 rounds of error feedback.

    Args:
        smpl: the body model (``SPINSMPL``), kept as submodule ``smpl``.
        init_pose / init_shape / init_cam: start values (1, 144) 6D, (1, 10), (1, 3), usually
            from ``smpl_mean_params.npz``; identity rotations, zeros and (0.9, 0, 0) if None.
        feat_dim: D (2048 for HMR features). hidden: width of fc1/fc2 (1024).
        n_iter: feedback rounds (3). dropout: after fc1 and fc2 (0.5).
    """

    def __init__(self, smpl: SPINSMPL, init_pose: torch.Tensor | None = None,
                 init_shape: torch.Tensor | None = None, init_cam: torch.Tensor | None = None,
                 feat_dim: int = 2048, hidden: int = 1024, n_iter: int = 3,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.n_iter = n_iter
        self.fc1 = nn.Linear(feat_dim + NPOSE + 13, hidden)
        self.drop1 = FastDropout(dropout)  # nn.Dropout's semantics, faster CPU mask
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = FastDropout(dropout)
        self.decpose = nn.Linear(hidden, NPOSE)
        self.decshape = nn.Linear(hidden, 10)
        self.deccam = nn.Linear(hidden, 3)
        # small heads: the first iterations stay close to the mean parameters
        for head in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(head.weight, gain=0.01)
        self.smpl = smpl
        if init_pose is None:
            init_pose = torch.tensor([1.0, 0, 0, 1, 0, 0]).repeat(24).unsqueeze(0)
        if init_shape is None:
            init_shape = torch.zeros(1, 10)
        if init_cam is None:
            init_cam = torch.tensor([[0.9, 0.0, 0.0]])
        self.register_buffer("init_pose", init_pose.reshape(1, NPOSE).float().clone())
        self.register_buffer("init_shape", init_shape.reshape(1, 10).float().clone())
        self.register_buffer("init_cam", init_cam.reshape(1, 3).float().clone())

    def forward(self, x: torch.Tensor, J_regressor: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """x (B, D) -> dict theta (B, 85), verts (B, V, 3), kp_3d (B, 49|14, 3),
        kp_2d (B, 49|14, 2), rotmat (B, 24, 3, 3).

        With ``J_regressor`` (17, V) the joints are ``J_regressor @ verts`` re-indexed by
        ``H36M_TO_J14`` (14 LSP joints) and projected instead of the 49 SPIN joints.
        """
        b = x.shape[0]
        pose = self.init_pose.expand(b, -1)
        shape = self.init_shape.expand(b, -1)
        cam = self.init_cam.expand(b, -1)
        for _ in range(self.n_iter):
            xc = torch.cat([x, pose, shape, cam], 1)
            xc = self.drop2(self.fc2(self.drop1(self.fc1(xc))))
            pose = self.decpose(xc) + pose
            shape = self.decshape(xc) + shape
            cam = self.deccam(xc) + cam
        # Body model and geometry in float32 even under autocast: products of rotations along
        # the kinematic chain lose millimetres in bf16; the MLP above is where the FLOPs are.
        with torch.autocast(x.device.type, enabled=False):
            pose, shape, cam = pose.float(), shape.float(), cam.float()
            rotmat = rot6d_to_rotmat(pose).view(b, 24, 3, 3)
            verts, joints = self.smpl(shape, rotmat)
            if J_regressor is not None:
                reg = J_regressor.to(verts)[None].expand(b, -1, -1)
                joints = torch.matmul(reg, verts)[:, list(H36M_TO_J14)]
            kp_2d = weak_perspective_projection(joints, cam)
            aa = rotmat_to_axis_angle(rotmat.reshape(-1, 3, 3)).reshape(b, 72)
        return {"theta": torch.cat([cam, aa, shape], dim=1), "verts": verts, "kp_2d": kp_2d,
                "kp_3d": joints, "rotmat": rotmat}
