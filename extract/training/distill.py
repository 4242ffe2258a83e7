"""AlphaPose's multi-domain knowledge distillation: one model trained on datasets whose keypoint
sets differ (e.g. COCO-17 and Halpe-26), a teacher model filling in the keypoints a dataset does
not annotate.

Per sample and joint: where the dataset labels the joint (``label_mask`` = 1) the target is the
annotation, weighted by its visibility; where it does not, the target is the teacher's prediction
on the same (augmented) crop, weighted by ``weight`` when the teacher's confidence reaches
``threshold`` and 0 otherwise.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["distill_fill", "Teacher"]


def distill_fill(joints: torch.Tensor, visible: torch.Tensor, label_mask: torch.Tensor,
                 teacher_joints: torch.Tensor, teacher_conf: torch.Tensor, threshold: float = 0.3,
                 weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, 2) joints, (N, K) visible / label_mask, teacher (N, K, 2) joints and (N, K) confidence
    -> (targets (N, K, 2), weights (N, K))."""
    missing = label_mask <= 0
    tj = teacher_joints.to(joints.dtype)
    out = torch.where(missing[..., None], tj, joints)
    confident = (teacher_conf >= threshold).to(visible.dtype)
    w = torch.where(missing, confident * float(weight), visible * label_mask)
    return out, w


class Teacher:
    """A frozen estimator of one recipe that predicts crop-pixel joints for a batch."""

    def __init__(self, kind: str, model: nn.Module, cfg: dict, crop_hw: tuple[int, int]) -> None:
        self.kind, self.model, self.cfg, self.crop_hw = kind, model.eval(), cfg, crop_hw
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from .recipes import decode_crop

        xy, conf = decode_crop(self.kind, self.model, batch, self.cfg, self.crop_hw)
        dev = batch["joints"].device
        return torch.from_numpy(xy).to(dev), torch.from_numpy(conf).to(dev)
