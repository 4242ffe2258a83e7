"""TCMR's generator loss (identical maths in VIBE) with explicit weights.

Terms:
* 2D: confidence x squared error of the 49 projected joints vs targets in [-1, 1], mean over
  every element of all samples (2D-only and 3D data), zero-confidence entries included in the
  denominator.
* 3D: 3D-data rows with ``w_3d``: joints 25..38 (LSP-14) of both sets re-centred on the
  mean of their joints 27/28 (hips), plain MSE.
* pose: rows with ``w_smpl``: predicted and target axis-angle both through the quaternion
  Rodrigues, MSE of the rotation matrices. shape: MSE of the betas on the same rows.
Released weights: 2D 300, 3D 300, pose 60, shape 0.06 (class defaults in the reference are
60/30/1/0.001). The motion-discriminator term has weight 0 in TCMR and is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from poselift.lifting.tcmr.rotations import axis_angle_to_rotmat

__all__ = ["TCMRLossWeights", "TCMRLoss", "keypoint_2d_loss", "keypoint_3d_loss",
           "smpl_losses", "RELEASED_WEIGHTS", "REFERENCE_DEFAULT_WEIGHTS"]


@dataclass(frozen=True)
class TCMRLossWeights:
    kp_2d: float = 300.0
    kp_3d: float = 300.0
    pose: float = 60.0
    shape: float = 0.06


RELEASED_WEIGHTS = TCMRLossWeights()
REFERENCE_DEFAULT_WEIGHTS = TCMRLossWeights(60.0, 30.0, 1.0, 0.001)


def keypoint_2d_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (M, J, 2), target (M, J, 3) = (x, y, conf) -> scalar mean of conf * sq. error."""
    conf = target[:, :, -1:]
    return (conf * (pred - target[:, :, :-1]) ** 2).mean()


def keypoint_3d_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred/target (M, 49, 3): LSP joints 25..38, each set centred on the mean of 27/28.

    Returns 0 (on pred's device) when M == 0.
    """
    if target.shape[0] == 0:
        return pred.new_zeros(())
    p, g = pred[:, 25:39], target[:, 25:39, :3]
    p = p - (p[:, 2] + p[:, 3])[:, None] / 2
    g = g - (g[:, 2] + g[:, 3])[:, None] / 2
    return ((p - g) ** 2).mean()


def smpl_losses(pred_pose: torch.Tensor, pred_shape: torch.Tensor, gt_pose: torch.Tensor,
                gt_shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-angle poses (M, 72) and betas (M, 10) -> (rotation-matrix MSE, betas MSE)."""
    if pred_pose.shape[0] == 0:
        zero = pred_pose.new_zeros(())
        return zero, zero
    r_pred = axis_angle_to_rotmat(pred_pose.reshape(-1, 3))
    r_gt = axis_angle_to_rotmat(gt_pose.reshape(-1, 3))
    return ((r_pred - r_gt) ** 2).mean(), ((pred_shape - gt_shape) ** 2).mean()


def _flat(x: torch.Tensor, lead: int) -> torch.Tensor:
    return x.reshape((-1,) + tuple(x.shape[lead:]))


class TCMRLoss(nn.Module):
    """Weighted sum of the four terms; ``forward`` returns (total, {term: weighted value}).

    Inputs: ``pred`` — the model's training output dict with theta (B, R, 85), kp_2d
    (B, R, 49, 2), kp_3d (B, R, 49, 3), R = 3 for TCMR ([past, future, fused]) or T for
    VIBE; rows ``[:n_2d]`` of the batch are 2D-only samples, the rest 3D samples.
    ``target_2d`` — {'kp_2d': (B2, R, 49, 3)} or None; ``target_3d`` — {'kp_2d' (B3, R, 49, 3),
    'kp_3d' (B3, R, 49, 3), 'theta' (B3, R, 85), 'w_3d' (B3, R), 'w_smpl' (B3, R)}.
    """

    def __init__(self, weights: TCMRLossWeights = RELEASED_WEIGHTS) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, pred: dict[str, torch.Tensor], target_2d: dict[str, torch.Tensor] | None,
                target_3d: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n_2d = 0 if not target_2d else target_2d["kp_2d"].shape[0]
        real_2d = target_3d["kp_2d"] if not target_2d else torch.cat(
            [target_2d["kp_2d"], target_3d["kp_2d"]], 0)
        if real_2d.shape[:2] != pred["kp_2d"].shape[:2]:
            raise ValueError(f"2D targets {tuple(real_2d.shape)} do not match predictions "
                             f"{tuple(pred['kp_2d'].shape)}")
        w_3d = target_3d["w_3d"].reshape(-1).bool()
        w_smpl = target_3d["w_smpl"].reshape(-1).bool()
        pred_j3d = _flat(pred["kp_3d"][n_2d:], 2)[w_3d]
        real_j3d = _flat(target_3d["kp_3d"], 2)[w_3d]
        pred_theta = _flat(pred["theta"][n_2d:], 2)[w_smpl]
        real_theta = _flat(target_3d["theta"], 2)[w_smpl]

        w = self.weights
        losses = {
            "loss_kp_2d": keypoint_2d_loss(_flat(pred["kp_2d"], 2), _flat(real_2d, 2)) * w.kp_2d,
            "loss_kp_3d": keypoint_3d_loss(pred_j3d, real_j3d) * w.kp_3d,
        }
        if pred_theta.shape[0] > 0:  # the reference leaves the SMPL terms out entirely
            pose, shape = smpl_losses(pred_theta[:, 3:75], pred_theta[:, 75:],
                                      real_theta[:, 3:75], real_theta[:, 75:])
            losses["loss_shape"] = shape * w.shape
            losses["loss_pose"] = pose * w.pose
        total = torch.stack(list(losses.values())).sum()
        return total, losses
