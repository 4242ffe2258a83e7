"""HRNet pose backbone with the official ``pose_hrnet`` state-dict layout.

Parameter names equal the reference pose checkpoints (``conv1``, ``bn1``, ``conv2``,
``bn2``, ``layer1``, ``transition1..3``, ``stage2..4`` with ``branches`` /
``fuse_layers``, ``final_layer``), so official HRNet-W32/W48 and DCPose/FAMI-Pose
(``hrnet.`` prefix) weights load without a key map. As in the reference, the last
stage-4 module fuses to the highest resolution only, and only that branch feeds
``final_layer``.
"""
from __future__ import annotations

import re
from functools import partial
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from poselift.core.checkpoints import CheckpointError, load_checkpoint, load_strict, unwrap_state_dict
from poselift.zoo import resolve_weights

__all__ = ["HRNet", "BasicBlock", "Bottleneck", "load_hrnet", "infer_hrnet_config", "read_checkpoint",
           "load_state_dict_strict", "extract_state_dict", "CheckpointError", "BACKBONES"]

BN_MOMENTUM = 0.1


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. (B, Cin, H, W) -> (B, C, H/s, W/s)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck with 4x expansion (HRNet stem layer1)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


def _proj(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout))


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by sum-fusion across resolutions.

    forward(list of (B, C_i, H/2^i, W/2^i)) -> list of the same (or only i=0 when
    ``multi_scale_output`` is False).
    """

    def __init__(self, channels: list[int], num_blocks: int, multi_scale_output: bool) -> None:
        super().__init__()
        n = len(channels)
        self.num_branches = n
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels)
        self.fuse_layers = None
        if n > 1:
            fuse = []
            for i in range(n if multi_scale_output else 1):
                row: list[nn.Module | None] = []
                for j in range(n):
                    if j > i:  # lower resolution -> 1x1 conv + nearest upsample
                        row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False), _bn(channels[i]),
                                                 nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                    elif j == i:
                        row.append(None)
                    else:  # higher resolution -> (i-j) strided 3x3 convs, ReLU between
                        steps = []
                        for k in range(i - j):
                            last = k == i - j - 1
                            cout = channels[i] if last else channels[j]
                            layers: list[nn.Module] = [nn.Conv2d(channels[j], cout, 3, 2, 1, bias=False), _bn(cout)]
                            if not last:
                                layers.append(nn.ReLU(inplace=True))
                            steps.append(nn.Sequential(*layers))
                        row.append(nn.Sequential(*steps))
                fuse.append(nn.ModuleList(row))
            self.fuse_layers = nn.ModuleList(fuse)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if row[0] is None else row[0](xs[0])
            for j in range(1, self.num_branches):
                y = y + (xs[j] if row[j] is None else row[j](xs[j]))
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """HRNet pose network (official ``pose_hrnet`` topology).

    forward(x (B, 3, H, W)) -> heatmaps (B, J, H/4, W/4); H and W must be multiples of 32
    (as in the reference: the nearest-upsampled low-resolution branches must line up).
    :meth:`forward_features` returns (heatmaps, feature (B, width, H/4, W/4)).
    """

    def __init__(self, width: int = 48, num_joints: int = 17, final_conv_kernel: int = 1,
                 stage_modules: tuple[int, int, int] = (1, 4, 3), num_blocks: int = 4) -> None:
        super().__init__()
        self.width, self.num_joints = width, num_joints
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(64, 64, downsample=_proj(64, 256)),
                                    *[Bottleneck(256, 64) for _ in range(3)])
        chans = [[width * 2 ** i for i in range(n)] for n in (2, 3, 4)]
        self.transition1 = self._transition([256], chans[0])
        self.stage2 = self._stage(chans[0], stage_modules[0], num_blocks, True)
        self.transition2 = self._transition(chans[0], chans[1])
        self.stage3 = self._stage(chans[1], stage_modules[1], num_blocks, True)
        self.transition3 = self._transition(chans[1], chans[2])
        self.stage4 = self._stage(chans[2], stage_modules[2], num_blocks, False)
        self.final_layer = nn.Conv2d(width, num_joints, final_conv_kernel, 1, 1 if final_conv_kernel == 3 else 0)

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, c in enumerate(cur):
            if i < len(prev):
                layers.append(None if prev[i] == c else nn.Sequential(
                    nn.Conv2d(prev[i], c, 3, 1, 1, bias=False), _bn(c), nn.ReLU(inplace=True)))
            else:  # new, lower-resolution branch from the last existing one
                steps = []
                for k in range(i + 1 - len(prev)):
                    cin = prev[-1]
                    cout = c if k == i - len(prev) else cin
                    steps.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), _bn(cout),
                                               nn.ReLU(inplace=True)))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    @staticmethod
    def _stage(chans: list[int], modules: int, blocks: int, multi_scale_last: bool) -> nn.Sequential:
        return nn.Sequential(*[HighResolutionModule(chans, blocks, multi_scale_last or m < modules - 1)
                               for m in range(modules)])

    @staticmethod
    def _apply_transition(trans: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, t in enumerate(trans):
            src = ys[i] if i < len(ys) else ys[-1]
            out.append(src if t is None else t(src))
        return out

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> (heatmaps (B, J, H/4, W/4), feature (B, width, H/4, W/4))."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2(self._apply_transition(self.transition1, [x]))
        ys = self.stage3(self._apply_transition(self.transition2, ys))
        ys = self.stage4(self._apply_transition(self.transition3, ys))
        feat = ys[0]
        return self.final_layer(feat), feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


BACKBONES: dict[str, Any] = {
    "hrnet_w32": partial(HRNet, 32),
    "hrnet_w48": partial(HRNet, 48),
}


# ----------------------------------------------------------------------------- loading
def read_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """Safe ``torch.load`` (weights_only plus the numpy allow-list) of the shared loader;
    a pickle that would run code raises :class:`CheckpointError` naming the file, and
    ``trust=True`` opts into full unpickling."""
    return load_checkpoint(path, trust=trust)


# The shared unwrapper and strict loader, under the names this module has always exported.
extract_state_dict = unwrap_state_dict
load_state_dict_strict = load_strict


def infer_hrnet_config(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, Any]:
    """Constructor kwargs of :class:`HRNet` read from a state dict's keys and shapes."""
    try:
        width = int(sd["transition1.0.0.weight"].shape[0])
        fw = sd["final_layer.weight"]
    except KeyError as e:
        raise CheckpointError(f"{source}: not an HRNet pose state dict, missing key {e.args[0]!r}") from None
    mods = []
    for s in (2, 3, 4):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"stage{s}\.(\d+)\.", k))}
        if not idx:
            raise CheckpointError(f"{source}: missing key 'stage{s}.0.*'")
        mods.append(max(idx) + 1)
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"stage2\.0\.branches\.0\.(\d+)\.", k))}
    return {"width": width, "num_joints": int(fw.shape[0]), "final_conv_kernel": int(fw.shape[-1]),
            "stage_modules": tuple(mods), "num_blocks": max(blocks) + 1 if blocks else 4}


def load_hrnet(path_or_state_dict: str | Path | Mapping[str, torch.Tensor], prefix: str | None = None,
               trust: bool = False) -> HRNet:
    """Build an :class:`HRNet` with widths inferred from the weights and load them strictly.

    Accepts a file (official ``pose_hrnet_w48_*.pth``, DCPose/FAMI ``epoch_N_state.pth``)
    or a state dict. ``prefix`` selects a sub-model (``"hrnet."`` for FAMI-Pose); by
    default ``hrnet.`` is stripped when every key carries it. Returned in eval mode.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "state dict"
        sd = extract_state_dict(path_or_state_dict, source)
    else:
        path = resolve_weights(path_or_state_dict)  # a zoo name ("hrnet-w32-coco-256x192") or a path
        source = str(path)
        sd = extract_state_dict(read_checkpoint(path, trust), source)
    if prefix is None and sd and all(k.startswith("hrnet.") for k in sd):
        prefix = "hrnet."
    if prefix:
        sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
        if not sd:
            raise CheckpointError(f"{source}: no keys with prefix {prefix!r}")
    model = HRNet(**infer_hrnet_config(sd, source))
    load_state_dict_strict(model, sd, source)
    return model.eval()
