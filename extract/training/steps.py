"""Training steps for the 2D estimators, plus synthetic data to smoke-test them.

* SIKR fine-tuning (AlphaPose): Adam 1e-3, L1 joint regression through the SIKR integral with
  the symmetric surrogate backward (``sikr_l1_loss``), on crops augmented with flip / rotation /
  scale applied to image and joints by one affine matrix (so targets stay consistent).
* FAMI-Pose head training: frozen HRNet (no gradient, BN statistics fixed), heatmap MSE plus
  0.1 x the paper's mutual-information objective (``famipose_loss``); only head parameters are
  in the optimiser.

Plain functions, one step each; a training loop is a ``for`` over batches calling them.
Coordinates are crop pixel indices (integer = pixel centre), as everywhere in extraction; a
horizontal flip maps x to ``W - 1 - x`` and swaps left/right joints.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from poselift.datasets.joints import get_joint_set

from ..estimators.famipose import FAMIPose
from ..estimators.famipose_loss import famipose_loss
from ..estimators.sikr import sikr_l1_loss, sikr_targets

__all__ = ["render_figure", "augment", "gaussian_heatmaps", "sikr_optimizer", "sikr_train_step",
           "fami_optimizer", "fami_train_step", "synthetic_sikr_batch", "synthetic_fami_batch"]


def render_figure(rng: np.random.Generator, size: tuple[int, int], joint_set: str = "coco17",
                  centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A stick figure on noise: (uint8 BGR (h, w, 3), joints (K, 2) crop px).

    Joints are a jittered upright template; bones are drawn grey and every joint a dot in its
    own colour, so joints are distinguishable (left and right differ)."""
    js = get_joint_set(joint_set)
    h, w = size
    k = js.num_joints
    t = np.linspace(0.15, 0.85, k)
    base = np.stack([0.5 + 0.25 * np.sin(np.arange(k) * 2.4), t], axis=1)
    c = np.array([0.5, 0.5]) if centre is None else centre
    pts = (base - 0.5) * 0.8 + c + rng.normal(0, 0.03, (k, 2))
    joints = (pts * [w - 1, h - 1]).astype(np.float32)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for a, b in js.bones():
        cv2.line(img, tuple(int(v) for v in joints[a]), tuple(int(v) for v in joints[b]), (128, 128, 128), 1)
    for j in range(k):
        col = tuple(int(v) for v in (np.array([j * 53, j * 97, j * 151]) % 200 + 55))
        cv2.circle(img, (int(round(joints[j, 0])), int(round(joints[j, 1]))), max(1, w // 32), col, -1)
    return img, joints


def augment(img: np.ndarray, joints: np.ndarray, rng: np.random.Generator, flip_perm: np.ndarray,
            *, flip_p: float = 0.5, rot_std: float = 30.0, rot_p: float = 0.6,
            scale_std: float = 0.25, scale_range: tuple[float, float] = (0.75, 1.25)
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip / rotate / scale about the crop centre, image and joints by the same matrix.

    Returns (image, joints (K, 2), visible (K,)): joints leaving the crop become invisible.
    Scale 1 + N(0, scale_std) clipped to ``scale_range``; rotation N(0, rot_std) deg, clipped
    to +-2 std, with probability ``rot_p`` (FAMI / AlphaPose style).
    """
    h, w = img.shape[:2]
    j = joints.astype(np.float64).copy()
    if rng.random() < flip_p:
        img = img[:, ::-1].copy()
        j[:, 0] = w - 1 - j[:, 0]
        j = j[flip_perm]
    s = float(np.clip(1 + rng.normal(0, scale_std), *scale_range))
    r = float(np.clip(rng.normal(0, rot_std), -2 * rot_std, 2 * rot_std)) if rng.random() < rot_p else 0.0
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), r, s)
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    j = j @ m[:, :2].T + m[:, 2]
    vis = (j[:, 0] >= 0) & (j[:, 0] <= w - 1) & (j[:, 1] >= 0) & (j[:, 1] <= h - 1)
    return img, j.astype(np.float32), vis


def gaussian_heatmaps(joints: np.ndarray, visible: np.ndarray, crop_hw: tuple[int, int], stride: int = 4,
                      sigma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 2) crop px -> (N, K, h/stride, w/stride) Gaussian targets (peak 1 at px/stride),
    weights (N, K) = visibility."""
    hh, ww = crop_hw[0] // stride, crop_hw[1] // stride
    ys, xs = np.mgrid[0:hh, 0:ww].astype(np.float32)
    mu = np.asarray(joints, np.float32) / stride
    d2 = (xs - mu[..., 0, None, None]) ** 2 + (ys - mu[..., 1, None, None]) ** 2
    return (np.exp(-d2 / (2 * sigma ** 2)) * visible[..., None, None]).astype(np.float32), visible.astype(np.float32)


def _to_input(imgs: np.ndarray, mean: Sequence[float], std: Sequence[float] | None) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(imgs[..., ::-1])).permute(0, 3, 1, 2).float() / 255.0
    x = x - torch.tensor(mean).view(1, 3, 1, 1)
    return x if std is None else x / torch.tensor(std).view(1, 3, 1, 1)


def synthetic_sikr_batch(rng: np.random.Generator, n: int, crop_hw: tuple[int, int], joint_set: str = "coco17",
                         mean: Sequence[float] = (0.406, 0.457, 0.480), augment_p: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x (N, 3, h, w), target (N, 2K), weight (N, 2K)) of augmented stick figures."""
    perm = get_joint_set(joint_set).flip_permutation()
    imgs, js, vs = [], [], []
    for _ in range(n):
        img, j = render_figure(rng, crop_hw, joint_set)
        v = np.ones(len(j), bool)
        if augment_p:
            img, j, v = augment(img, j, rng, perm)
        imgs.append(img), js.append(j), vs.append(v)
    t, wt = sikr_targets(np.stack(js), np.stack(vs), crop_hw)
    return _to_input(np.stack(imgs), mean, None), torch.from_numpy(t), torch.from_numpy(wt)


def sikr_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """AlphaPose's optimiser: Adam, lr 1e-3, no weight decay."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def sikr_train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
                    weight: torch.Tensor) -> float:
    """One SIKR step: x (N, 3, h, w), target/weight (N, 2K) -> loss (symmetric-integral L1)."""
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = sikr_l1_loss(model(x), target, weight, symmetric_grad=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def synthetic_fami_batch(rng: np.random.Generator, n: int, crop_hw: tuple[int, int], joint_set: str = "posetrack17",
                         stride: int = 4, sigma: float = 2.0, motion: float = 0.03
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(key (N, 3, h, w), sup (N, 4, 3, h, w), target heatmaps (N, K, h/s, w/s), weight (N, K)):
    a figure drifting by ``motion`` of the crop per frame, key frame in the middle."""
    from ..contracts import IMAGENET_MEAN, IMAGENET_STD

    keys, sups, js = [], [], []
    for _ in range(n):
        c0, v = rng.uniform(0.4, 0.6, 2), rng.normal(0, motion, 2)
        seed = int(rng.integers(1 << 31))
        frames = []
        for off in (0, -2, -1, 1, 2):
            img, j = render_figure(np.random.default_rng(seed), crop_hw, joint_set, c0 + off * v)
            frames.append(img)
            if off == 0:
                js.append(j)
        keys.append(frames[0]), sups.append(np.stack(frames[1:]))
    key = _to_input(np.stack(keys), IMAGENET_MEAN, IMAGENET_STD)
    sup = _to_input(np.concatenate(sups), IMAGENET_MEAN, IMAGENET_STD).reshape(n, 4, 3, *crop_hw)
    joints = np.stack(js)
    hm, wt = gaussian_heatmaps(joints, np.ones(joints.shape[:2], bool), crop_hw, stride, sigma)
    return key, sup, torch.from_numpy(hm), torch.from_numpy(wt)


def fami_optimizer(model: FAMIPose, lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam 1e-3 over the head only (the backbone is frozen)."""
    head = [p for m in model.head_modules() for p in m.parameters() if p.requires_grad]
    return torch.optim.Adam(head, lr=lr)


def fami_train_step(model: FAMIPose, opt: torch.optim.Optimizer, key: torch.Tensor, sup: torch.Tensor,
                    target: torch.Tensor, weight: torch.Tensor, mi_weight: float = 0.1,
                    release_mi: bool = False) -> dict[str, float]:
    """One head step: heatmap MSE + ``mi_weight`` x MI. Returns the loss parts as floats."""
    model.train()
    opt.zero_grad(set_to_none=True)
    out = model(key, sup)
    total, parts = famipose_loss(out, target, weight, model.hrnet.final_layer, release_mi=release_mi,
                                 mi_weight=mi_weight)
    total.backward()
    opt.step()
    return {k: float(v.detach()) for k, v in parts.items()}
