"""Training losses of the VideoPose3D lifters.

All functions are differentiable torch code returning a 0-d tensor, in the
units of their inputs (the reference trains in metres). Shapes use ``...`` for
any leading axes, typically (B, T); J joints; the last axis holds coordinates.
These are training objectives; the reported metrics (mm, masks, Procrustes)
live in ``poselift.evaluation``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "bone_length_loss",
    "depth_weights",
    "mean_velocity_error",
    "mpjpe_loss",
    "n_mpjpe_loss",
    "projection_loss",
    "weighted_mpjpe_loss",
]


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"{names}: need (..., J, C) tensors, got shape {tuple(a.shape)}")


def mpjpe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error: mean over joints and frames of ||pred - target||_2.

    pred, target: (..., J, 3) (any number of leading axes, e.g. (B, T)).
    """
    _same_shape(pred, target, "mpjpe_loss(pred, target)")
    return torch.linalg.vector_norm(pred - target, dim=-1).mean()


def weighted_mpjpe_loss(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted MPJPE: mean of ``w * ||pred - target||_2``.

    pred, target: (..., J, 3); w broadcastable to (..., J), e.g. (B, T, 1) for a
    trajectory (J = 1) with ``w = 1 / z_root`` (see :func:`depth_weights`), so
    distant subjects, whose root depth is harder to regress, count less.
    """
    _same_shape(pred, target, "weighted_mpjpe_loss(pred, target)")
    err = torch.linalg.vector_norm(pred - target, dim=-1)
    try:
        ok = torch.broadcast_shapes(w.shape, err.shape) == err.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"weighted_mpjpe_loss: w shape {tuple(w.shape)} does not broadcast to the "
            f"per-joint errors {tuple(err.shape)} (use e.g. (B, T, 1) for (B, T, 1, 3))")
    return (w * err).mean()


def depth_weights(traj_target: torch.Tensor) -> torch.Tensor:
    """Trajectory-loss weights ``1 / z_root``: (..., 1, 3) root positions -> (..., 1)."""
    if traj_target.shape[-1] != 3:
        raise ValueError(f"depth_weights: need (..., 3) positions, got {tuple(traj_target.shape)}")
    return 1.0 / traj_target[..., 2]


def n_mpjpe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-normalised MPJPE: rescale each pose by the least-squares scale first.

    s = sum_j <pred_j, target_j> / sum_j ||pred_j||^2 per pose (all joints of one
    frame), then ``mpjpe_loss(s * pred, target)``. pred, target: (..., J, 3).
    """
    _same_shape(pred, target, "n_mpjpe_loss(pred, target)")
    norm_pred = (pred * pred).sum(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
    dot = (target * pred).sum(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
    return mpjpe_loss(dot / norm_pred * pred, target)


def mean_velocity_error(pred: torch.Tensor, target: torch.Tensor, time_dim: int = -3) -> torch.Tensor:
    """MPJVE: mean norm of the difference of first temporal differences (not divided by dt).

    pred, target: (T, J, 3) or (B, T, J, 3); frames on ``time_dim`` (default -3).
    Differences never cross the batch axis, so sequences stay separate.
    """
    _same_shape(pred, target, "mean_velocity_error(pred, target)")
    if pred.dim() < 3 or pred.shape[time_dim] < 2:
        raise ValueError(f"mean_velocity_error: need >= 2 frames on dim {time_dim}, "
                         f"got shape {tuple(pred.shape)}")
    dv = torch.diff(pred, dim=time_dim) - torch.diff(target, dim=time_dim)
    return torch.linalg.vector_norm(dv, dim=-1).mean()


def _bone_lengths(x: torch.Tensor, parents: Sequence[int]) -> torch.Tensor:
    """(..., J, 3) -> mean length of every bone (child j, parent p >= 0) over ..., (n_bones,)."""
    if x.dim() < 2 or x.shape[-2] != len(parents) or x.shape[-1] != 3:
        raise ValueError(f"bone_length_loss: need (..., {len(parents)}, 3) for {len(parents)} "
                         f"parents, got {tuple(x.shape)}")
    child = [j for j, p in enumerate(parents) if p >= 0]
    parent = [p for p in parents if p >= 0]
    lengths = torch.linalg.vector_norm(x[..., child, :] - x[..., parent, :], dim=-1)
    return lengths.reshape(-1, len(child)).mean(dim=0)


def bone_length_loss(pred_labeled: torch.Tensor, pred_unlabeled: torch.Tensor,
                     parents: Sequence[int]) -> torch.Tensor:
    """Semi-supervised bone-length term: mean_b |L_lab(b) - L_unlab(b)|.

    L(b) is the mean length of bone b (joint -> parent) over all leading axes
    (batch and frames) of one set of predictions. pred_labeled: (B1, T, J, 3),
    pred_unlabeled: (B2, T, J, 3) (B1 and B2 may differ); parents: J entries, -1
    for a root (e.g. ``H36M17.parents``).
    """
    if not any(p >= 0 for p in parents):
        raise ValueError("bone_length_loss: parents define no bone")
    return (_bone_lengths(pred_labeled, parents) - _bone_lengths(pred_unlabeled, parents)).abs().mean()


def projection_loss(pred_2d: torch.Tensor, target_2d: torch.Tensor) -> torch.Tensor:
    """2D reprojection error: mean Euclidean distance of projected vs observed keypoints.

    pred_2d, target_2d: (..., J, 2), in the same (normalised) image coordinates.
    """
    _same_shape(pred_2d, target_2d, "projection_loss(pred_2d, target_2d)")
    return torch.linalg.vector_norm(pred_2d - target_2d, dim=-1).mean()
