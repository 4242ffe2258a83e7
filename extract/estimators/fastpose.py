"""AlphaPose FastPose: SE-ResNet backbone + DUC (pixel-shuffle) head, and its checkpoint loader.

Module names reproduce AlphaPose's state-dict keys (``preact.*``, ``suffle1`` [sic],
``duc1.conv/bn``, ``duc2.conv/bn``, ``conv_out``) so a released checkpoint loads with an
identity key map. Every width is a constructor argument: the released model
(stem 64, stages 256/512/1024/2048, duc1 512->1024, duc2 256->512 or 256->1024 for
Halpe-136 ``CONV_DIM: 256``) and width-reduced copies share one class, and
:func:`load_alphapose` infers all of them from the weights.

Input (B, 3, 256, 192) crops -> output (B, K, 64, 48) logits (stride 4).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from poselift.core.checkpoints import CheckpointError, load_checkpoint, load_strict, unwrap_state_dict
from poselift.zoo import resolve_weights

__all__ = [
    "SELayer", "Bottleneck", "SEResNet", "DUC", "FastPose", "FASTPOSE_VARIANTS",
    "RESNET_DEPTHS", "fastpose_config_from_state_dict", "load_alphapose", "read_state_dict",
]

# Stage block counts of the ResNet depths AlphaPose's SEResnet accepts with Bottlenecks.
RESNET_DEPTHS: dict[tuple[int, ...], int] = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}

_EXPANSION = 4  # Bottleneck output = 4 x inner width


class SELayer(nn.Module):
    """Squeeze-excite with reduction 1: (B, C, H, W) -> (B, C, H, W) channel-gated.

    ``fc`` is Sequential(Linear C->C, ReLU, Linear C->C, Sigmoid) so keys are ``fc.0``/``fc.2``.
    """

    def __init__(self, channels: int, reduction: int = 1) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, as in AlphaPose) -> 1x1 (x4), optional SE on bn3 output.

    Attribute order (conv1, bn1, conv2, bn2, conv3, bn3, se, downsample) fixes the
    state-dict key order of the reference.
    """

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, use_se: bool = False) -> None:
        super().__init__()
        out_ch = planes * _EXPANSION
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5, momentum=0.1)
        self.conv3 = nn.Conv2d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
        self.se: SELayer | None = SELayer(out_ch) if use_se else None
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class SEResNet(nn.Module):
    """AlphaPose ``preact``: conv7x7/2 + BN + ReLU + maxpool 3/2, then 4 Bottleneck stages.

    (B, 3, H, W) -> (B, widths[-1], H/32, W/32). SE sits only in the first block of a stage
    (the block that has a projection shortcut, as in the reference).
    """

    def __init__(self, stem: int = 64, widths: Sequence[int] = (256, 512, 1024, 2048),
                 layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        if len(widths) != 4 or len(layers) != 4:
            raise ValueError(f"SEResNet needs 4 stage widths and 4 block counts, got {widths}, {layers}")
        for w in widths:
            if w % _EXPANSION:
                raise ValueError(f"stage width {w} is not a multiple of the bottleneck expansion 4")
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5, momentum=0.1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = stem
        for i, (width, n) in enumerate(zip(widths, layers)):
            stage = self._make_stage(in_ch, width // _EXPANSION, n, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
            in_ch = width

    @staticmethod
    def _make_stage(in_ch: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_ch = planes * _EXPANSION
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1),
            )
        mods = [Bottleneck(in_ch, planes, stride, downsample, use_se=downsample is not None)]
        mods += [Bottleneck(out_ch, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return x


class DUC(nn.Module):
    """Dense upsampling: conv3x3 (no bias) + BN + ReLU + PixelShuffle(r).

    (B, C_in, H, W) -> (B, C_out / r^2, rH, rW).
    """

    def __init__(self, in_ch: int, out_ch: int, upscale_factor: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, momentum=0.1)
        self.relu = nn.ReLU(inplace=True)
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_shuffle(self.relu(self.bn(self.conv(x))))


class FastPose(nn.Module):
    """FastPose (SE-ResNet + PixelShuffle + 2 DUC + conv_out): (B, 3, 256, 192) -> (B, K, 64, 48).

    ``duc1`` takes ``widths[-1] / 4`` channels (after ``suffle1``), ``duc2`` takes
    ``duc1_out / 4`` and ``conv_out`` takes ``duc2_out / 4``; ``conv_out_in`` may be given
    only as a consistency check of that last number.
    """

    def __init__(self, num_joints: int, stem: int = 64,
                 widths: Sequence[int] = (256, 512, 1024, 2048),
                 layers: Sequence[int] = (3, 4, 6, 3), duc1_out: int = 1024, duc2_out: int = 512,
                 conv_out_in: int | None = None) -> None:
        super().__init__()
        for name, c in (("widths[-1]", widths[-1]), ("duc1_out", duc1_out), ("duc2_out", duc2_out)):
            if c % 4:
                raise ValueError(f"FastPose: {name}={c} must be divisible by 4 (PixelShuffle(2))")
        if conv_out_in is not None and conv_out_in != duc2_out // 4:
            raise ValueError(f"FastPose: conv_out_in={conv_out_in} but duc2_out/4={duc2_out // 4}")
        self.num_joints = int(num_joints)
        self.preact = SEResNet(stem, widths, layers)
        self.suffle1 = nn.PixelShuffle(2)  # [sic]: the reference's attribute name
        self.duc1 = DUC(widths[-1] // 4, duc1_out, upscale_factor=2)
        self.duc2 = DUC(duc1_out // 4, duc2_out, upscale_factor=2)
        self.conv_out = nn.Conv2d(duc2_out // 4, num_joints, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.suffle1(self.preact(x))
        out = self.duc2(self.duc1(out))
        return self.conv_out(out)


def _variant(num_joints: int, layers: tuple[int, ...], duc2_out: int = 512) -> FastPose:
    return FastPose(num_joints, layers=layers, duc2_out=duc2_out)


# Variant name -> constructor taking ``num_joints``; released full-width layouts.
FASTPOSE_VARIANTS: dict[str, Callable[[int], FastPose]] = {
    "fastpose_r50": partial(_variant, layers=(3, 4, 6, 3)),
    "fastpose_r101": partial(_variant, layers=(3, 4, 23, 3)),
    "fastpose_r152": partial(_variant, layers=(3, 8, 36, 3)),
    # Halpe-136 configs set CONV_DIM 256: duc2 256->1024, conv_out 256->K.
    "fastpose_r50_convdim256": partial(_variant, layers=(3, 4, 6, 3), duc2_out=1024),
}


def _need(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}: missing key {key!r} (not an AlphaPose FastPose state dict?)")
    return sd[key]


def fastpose_config_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "<state_dict>"
                                    ) -> dict[str, Any]:
    """FastPose constructor kwargs inferred from weight shapes (any width, depth 50/101/152)."""
    stem = int(_need(sd, "preact.conv1.weight", source).shape[0])
    widths, layers = [], []
    for s in range(1, 5):
        widths.append(int(_need(sd, f"preact.layer{s}.0.conv3.weight", source).shape[0]))
        n = 0
        while f"preact.layer{s}.{n}.conv1.weight" in sd:
            n += 1
        layers.append(n)
    duc1_out = int(_need(sd, "duc1.conv.weight", source).shape[0])
    duc2_out = int(_need(sd, "duc2.conv.weight", source).shape[0])
    w_out = _need(sd, "conv_out.weight", source)
    return dict(num_joints=int(w_out.shape[0]), stem=stem, widths=tuple(widths), layers=tuple(layers),
                duc1_out=duc1_out, duc2_out=duc2_out, conv_out_in=int(w_out.shape[1]))


def read_state_dict(path: str | Path, map_location: str | torch.device = "cpu",
                    trust: bool = False) -> dict[str, torch.Tensor]:
    """Load a checkpoint as a flat ``{key: tensor}`` dict (the shared safe reader and unwrapper).

    Accepts a plain state dict or one wrapped under ``'state_dict'``/``'model'``, and strips
    a DataParallel ``module.`` prefix. Unless ``trust=True``, a pickle that would run code is
    refused with a :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    return unwrap_state_dict(load_checkpoint(path, trust=trust, map_location=map_location), str(path))


def load_alphapose(path: str | Path, num_joints: int | None = None,
                   map_location: str | torch.device = "cpu", trust: bool = False) -> FastPose:
    """Build a FastPose whose widths/depth/K are inferred from ``path`` and load it strictly.

    Returns the model in eval mode on ``map_location``. ``num_joints``, when given, must match
    ``conv_out``'s output channels.
    """
    path = resolve_weights(path)  # a zoo name ("alphapose-fastpose-coco17") or a path
    source = str(path)
    sd = read_state_dict(path, map_location=map_location, trust=trust)
    cfg = fastpose_config_from_state_dict(sd, source)
    if num_joints is not None and num_joints != cfg["num_joints"]:
        raise CheckpointError(f"{source}: key 'conv_out.weight' gives {cfg['num_joints']} joints, "
                         f"caller asked for {num_joints}")
    model = FastPose(**cfg)
    load_strict(model, sd, source)
    return model.to(map_location).eval()
