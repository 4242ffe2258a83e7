"""Feature backbones: variant name -> constructor, plus the checkpoint loaders.

``BACKBONES[name](base_width=64)`` builds an untrained model (features only, no fc head);
real weights come from ``load_torchvision_resnet`` (torchvision files) or ``load_spin_backbone``
(SPIN/HMR ``{'model': ...}`` files, the backbone of TCMR/VIBE features).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from poselift.core.checkpoints import CheckpointError, file_sha256, load_checkpoint
from .resnet import (ResNet, infer_resnet_depth, load_spin_backbone, load_torchvision_resnet,
                     resnet)

BACKBONES: dict[str, Callable[..., ResNet]] = {
    "resnet18": partial(resnet, 18),
    "resnet34": partial(resnet, 34),
    "resnet50": partial(resnet, 50),
    "resnet101": partial(resnet, 101),
    "resnet152": partial(resnet, 152),
    "hmr": partial(resnet, 50),  # SPIN/HMR trunk = ResNet-50; weights via load_spin_backbone
}

# How each variant's weights are read (the CLI's --weights-format auto uses this).
WEIGHT_LOADERS: dict[str, Callable[..., ResNet]] = {
    "torchvision": load_torchvision_resnet,
    "spin": load_spin_backbone,
}

__all__ = ["BACKBONES", "WEIGHT_LOADERS", "ResNet", "load_torchvision_resnet", "load_spin_backbone",
           "infer_resnet_depth", "CheckpointError", "load_checkpoint", "file_sha256"]
