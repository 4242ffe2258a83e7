"""AlphaPose / HRNet training augmentation as one affine matrix per sample.

A sample is (image, box xyxy, keypoints (K, 3)). The crop matrix of the estimator's contract
(``PreprocessContract.crop_affine``: aspect-corrected box x 1.25 -> input size) is composed with

* random scale ``1 + N(0, scale_std)`` clipped to ``1 +- scale_std`` (AlphaPose / HRNet: 0.65..1.35),
  a zoom about the crop centre by ``1 / s`` (s > 1 shows more context, as the box grows),
* random rotation ``N(0, rot_deg)`` clipped to ``+- 2 rot_deg`` with probability ``rot_p``,
* horizontal flip with probability ``flip_p``: ``x -> W - 1 - x`` (pixel indices, the crop
  convention) and the joint set's left/right permutation,

and, before that, the half-body box (probability ``half_body_p`` when more than 8 joints are
visible: the box of the upper or lower body joints, enlarged 1.5x). Image and joints go through
the same matrix, so targets stay consistent; joints that leave the crop become invisible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from poselift.datasets.joints import get_joint_set

from ..contracts import PreprocessContract

__all__ = ["AugmentConfig", "UPPER_BODY", "half_body_box", "sample_affine", "warp_sample", "apply_affine"]

# Joints that count as "upper body" for the half-body box (by name; the rest are lower body).
UPPER_BODY = {"nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
              "l_wrist", "r_wrist", "head", "neck", "head_bottom", "head_top"}


@dataclass(frozen=True)
class AugmentConfig:
    """AlphaPose's COCO recipe by default (scale 0.35, rotation 45 deg, flip, half-body 0.3)."""

    scale_std: float = 0.35
    rot_deg: float = 45.0
    rot_p: float = 0.6
    flip_p: float = 0.5
    half_body_p: float = 0.3
    enabled: bool = True


def half_body_box(kps: np.ndarray, joint_set: str, rng: np.random.Generator) -> np.ndarray | None:
    """xyxy box of a random half (upper or lower) of the visible joints x 1.5, or None."""
    js = get_joint_set(joint_set)
    upper = np.array([n in UPPER_BODY or n.startswith(("face_", "l_hand", "r_hand")) for n in js.names])
    vis = kps[:, 2] > 0
    if vis.sum() <= 8:
        return None
    part = vis & (upper if rng.random() < 0.5 else ~upper)
    if part.sum() < 2:
        part = vis & ~part if (vis & ~part).sum() >= 2 else vis
    p = kps[part, :2]
    lo, hi = p.min(0), p.max(0)
    c, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * 1.5, 1.0)
    return np.concatenate([c - half, c + half])


def sample_affine(box: np.ndarray, kps: np.ndarray, contract: PreprocessContract, joint_set: str,
                  cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(2x3 image -> crop matrix, flipped) for one sample; ``cfg.enabled=False`` gives the plain crop."""
    h, w = contract.crop_hw
    if cfg.enabled and cfg.half_body_p > 0 and rng.random() < cfg.half_body_p:
        hb = half_body_box(kps, joint_set, rng)
        box = box if hb is None else hb
    m = np.vstack([contract.crop_affine(np.asarray(box, float)), [0, 0, 1]])
    if not cfg.enabled:
        return m[:2], False
    s = float(np.clip(1 + rng.normal(0, cfg.scale_std), 1 - cfg.scale_std, 1 + cfg.scale_std)) \
        if cfg.scale_std > 0 else 1.0
    r = float(np.clip(rng.normal(0, cfg.rot_deg), -2 * cfg.rot_deg, 2 * cfg.rot_deg)) \
        if cfg.rot_deg > 0 and rng.random() < cfg.rot_p else 0.0
    rs = np.vstack([cv2.getRotationMatrix2D((w / 2.0, h / 2.0), r, 1.0 / max(s, 1e-3)), [0, 0, 1]])
    m = rs @ m
    flip = cfg.flip_p > 0 and rng.random() < cfg.flip_p
    if flip:
        m = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]]) @ m
    return m[:2], flip


def apply_affine(kps: np.ndarray, m: np.ndarray, crop_hw: tuple[int, int], flip_perm: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3) image keypoints -> (joints (K, 2) crop px, visible (K,) bool), permuted when flipped."""
    j = kps[:, :2] @ m[:, :2].T + m[:, 2]
    h, w = crop_hw
    vis = (kps[:, 2] > 0) & (j[:, 0] >= 0) & (j[:, 0] <= w - 1) & (j[:, 1] >= 0) & (j[:, 1] <= h - 1)
    if flip_perm is not None:
        j, vis = j[flip_perm], vis[flip_perm]
    return j.astype(np.float32), vis


def warp_sample(images: Sequence[np.ndarray], m: np.ndarray, crop_hw: tuple[int, int]) -> list[np.ndarray]:
    """Warp every image (the key frame and its supporting frames share the key frame's matrix,
    as FAMI-Pose crops them) to (h, w, 3), bilinear, black border."""
    h, w = crop_hw
    return [cv2.warpAffine(im, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            for im in images]
