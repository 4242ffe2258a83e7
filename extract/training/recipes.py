"""The three estimator recipes: model construction from a config dict, the loss of one batch and
the decode to crop pixels used by validation.

* ``sikr`` (AlphaPose): FastPose, L1 joint regression through the SIKR integral with the
  symmetric surrogate gradient (``sikr_l1_loss``), targets ``x / W - 0.5``.
* ``simcc``: HRNet maps -> :class:`SimCCHead`, KL divergence to 1-D Gaussian labels
  (``KLDiscretLoss``, sigma in bins).
* ``famipose``: HRNet backbone (frozen by default, BN statistics fixed) + FAMI-Pose head,
  heatmap MSE plus the MI objective, ``release`` or ``paper`` configuration.

An optional Tompson spatial model (``model.spatial_model.enabled``) refines the maps of the
``sikr`` and ``simcc`` recipes before their decode / head.

Batches are the dicts of :mod:`.datasets` (``image`` (N, 3, H, W), ``joints`` (N, K, 2) crop px,
``weight`` (N, K): visibility x label mask, or distillation weights).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..estimators.famipose import PAPER, RELEASE, FAMIPose
from ..estimators.famipose_loss import famipose_loss
from ..estimators.fastpose import FastPose
from ..estimators.hrnet import HRNet, load_hrnet
from ..estimators.sikr import flip_pairs_for, flip_test_logits, sikr_integral, sikr_l1_loss
from ..estimators.simcc import KLDiscretLoss, SimCCHead, gaussian_soft_labels, simcc_decode
from ..estimators.spatial_model import SpatialModel, SpatialRefined
from ..keypoint_runners import fami_decode
from .steps import gaussian_heatmaps

__all__ = ["RECIPES", "SimCCModel", "build_model", "batch_loss", "decode_crop", "trainable_parameters"]

RECIPES = ("sikr", "simcc", "famipose")


class SimCCModel(nn.Module):
    """HRNet joint maps (optionally spatially refined) -> SimCC x / y logits."""

    def __init__(self, maps: nn.Module, head: SimCCHead) -> None:
        super().__init__()
        self.maps, self.head = maps, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.maps(x))


def _spatial(base: nn.Module, k: int, cfg: dict, activation: str) -> nn.Module:
    sm = cfg.get("spatial_model") or {}
    if not sm.get("enabled", False):
        return base
    return SpatialRefined(base, SpatialModel(k, int(sm.get("kernel", 15)), activation),
                          freeze_base=bool(sm.get("freeze_base", False)))


def build_model(cfg: dict, num_joints: int, crop_hw: tuple[int, int]) -> nn.Module:
    """Model of recipe ``cfg['type']`` for ``num_joints`` and input (h, w)."""
    kind = cfg.get("type")
    if kind not in RECIPES:
        raise ValueError(f"model.type must be one of {RECIPES}, got {kind!r}")
    if kind == "sikr":
        fp = dict(cfg.get("fastpose") or {})
        for key in ("widths", "layers"):
            if key in fp:
                fp[key] = tuple(fp[key])
        return _spatial(FastPose(num_joints, **fp), num_joints, cfg, "sigmoid")
    hr = dict(cfg.get("hrnet") or {})
    if kind == "simcc":
        sc = cfg.get("simcc") or {}
        maps = _spatial(HRNet(num_joints=num_joints, **hr), num_joints, cfg, "relu")
        h, w = crop_hw
        head = SimCCHead((h // 4, w // 4), (w, h), float(sc.get("split_ratio", 2.0)))
        return SimCCModel(maps, head)
    fm = cfg.get("famipose") or {}
    if (cfg.get("spatial_model") or {}).get("enabled", False):
        raise ValueError("model.spatial_model is not available for famipose (its head is not a plain map head)")
    backbone = load_hrnet(fm["backbone_weights"]) if fm.get("backbone_weights") else HRNet(num_joints=num_joints, **hr)
    variant = {"release": RELEASE, "paper": PAPER}.get(fm.get("config", "release"))
    if variant is None:
        raise ValueError(f"model.famipose.config must be 'release' or 'paper', got {fm.get('config')!r}")
    h, w = crop_hw
    variant = replace(variant, feature_size=(h // 4, w // 4), freeze_backbone=bool(fm.get("freeze_backbone", True)))
    return FAMIPose(backbone, num_joints, variant)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters the optimiser updates (FAMI-Pose: the head only unless unfrozen)."""
    m = model.module if hasattr(model, "module") else model
    if isinstance(m, FAMIPose) and m.config.freeze_backbone:
        return [p for mod in m.head_modules() for p in mod.parameters() if p.requires_grad]
    return [p for p in m.parameters() if p.requires_grad]


def batch_loss(kind: str, model: nn.Module, batch: dict[str, torch.Tensor], cfg: dict,
               crop_hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, float parts) of one batch for recipe ``kind``."""
    x, joints, weight = batch["image"], batch["joints"], batch["weight"]
    h, w = crop_hw
    if kind == "sikr":
        target = torch.stack([joints[..., 0] / w - 0.5, joints[..., 1] / h - 0.5], dim=-1)
        wt = weight[..., None].expand(-1, -1, 2).clone()
        k = wt.shape[1]
        if k in (136, 133, 68):  # AlphaPose doubles the body joints of whole-body sets
            wt[:, :26 if k != 133 else 23] *= 2
        loss = sikr_l1_loss(model(x).float(), target, wt, symmetric_grad=True)
        return loss, {"l1": float(loss.detach())}
    if kind == "simcc":
        sc = cfg.get("simcc") or {}
        split, sigma = float(sc.get("split_ratio", 2.0)), float(sc.get("sigma", 6.0))
        lx, ly = model(x)
        tx, ty = gaussian_soft_labels(joints, (w, h), split, sigma)
        loss = KLDiscretLoss()(lx.float(), ly.float(), tx, ty, weight)
        return loss, {"kl": float(loss.detach())}
    fm = cfg.get("famipose") or {}
    hm, wt = gaussian_heatmaps(joints.detach().cpu().numpy(), weight.detach().cpu().numpy(), crop_hw, 4,
                               float(fm.get("sigma", 3.0)))
    target = torch.from_numpy(hm).to(x.device) * (torch.from_numpy(wt).to(x.device) > 0)[..., None, None]
    m = model.module if hasattr(model, "module") else model
    out = model(x, batch["support"])
    total, parts = famipose_loss(out, target, torch.from_numpy(wt).to(x.device), m.hrnet.final_layer,
                                 release_mi=fm.get("config", "release") == "release",
                                 mi_weight=float(fm.get("mi_weight", 0.1)))
    return total, {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def decode_crop(kind: str, model: nn.Module, batch: dict[str, torch.Tensor], cfg: dict,
                crop_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(joints (N, K, 2) crop px, scores (N, K)) predicted for a batch (eval mode by the caller)."""
    x = batch["image"]
    h, w = crop_hw
    if kind == "sikr":
        logits = model(x).float()
        if cfg.get("flip_test", False):  # AlphaPose's flip test: average raw logits with the mirror's
            logits = flip_test_logits(model, x, flip_pairs_for(logits.shape[1]))
        norm, conf = sikr_integral(logits)
        xy = torch.stack([(norm[..., 0] + 0.5) * w, (norm[..., 1] + 0.5) * h], -1)
        return xy.cpu().numpy(), conf[..., 0].cpu().numpy()
    if kind == "simcc":
        lx, ly = model(x)
        xy, s = simcc_decode(lx.float(), ly.float(), float((cfg.get("simcc") or {}).get("split_ratio", 2.0)))
        return xy.cpu().numpy(), s.cpu().numpy()
    out = model(x, batch["support"])
    cells, peak = fami_decode(out.heatmaps)
    return cells * 4.0, peak


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
