"""ResNet feature backbones with torchvision's state-dict layout (ResNet v1.5).

Key names are those of torchvision's ``resnet*`` models (``conv1``, ``bn1``, ``layer1..4`` of
Bottleneck/BasicBlock with ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0/1``, ``fc``), so
torchvision checkpoints and the ResNet-50 inside SPIN/HMR checkpoints load with an identity key map.
The stride of a down-sampling Bottleneck sits on its 3x3 ``conv2`` (v1.5), as in torchvision and
SPIN.

``forward`` returns the global-average-pooled layer4 output, (B, D) with D = 8 * base_width *
expansion: 2048 for ResNet-50/101/152 at base_width 64, 512 for ResNet-18/34. A smaller
``base_width`` (tests use 8) shrinks every layer proportionally, so D shrinks too (256 at 8).
SPIN's HMR pools with ``AvgPool2d(7)``, which equals the global mean for 224x224 crops.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch
from torch import nn

from poselift.core.checkpoints import CheckpointError, file_sha256, load_checkpoint, load_strict, unwrap_state_dict
from poselift.zoo import resolve_weights

log = logging.getLogger(__name__)

__all__ = ["ResNet", "Bottleneck", "BasicBlock", "RESNET_LAYERS", "resnet", "load_torchvision_resnet",
           "load_spin_backbone", "infer_resnet_depth", "HMR_REGRESSOR_PREFIXES"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, v1.5) -> 1x1 expanding by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


# depth -> (block, blocks per stage); the same table as the ResNet paper / torchvision.
RESNET_LAYERS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk returning pooled features (B, D) from images (B, 3, H, W).

    Args:
        depth: 18, 34, 50, 101 or 152 (see ``RESNET_LAYERS``).
        base_width: channels of the stem and of stage 1 (64 in the real models).
        num_classes: size of the ``fc`` head kept for state-dict parity; None builds no head.
            ``forward`` never applies it (use ``logits`` for that).
    """

    def __init__(self, depth: int = 50, base_width: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(RESNET_LAYERS)}")
        block, layers = RESNET_LAYERS[depth]
        self.depth, self.base_width, self.num_classes = depth, base_width, num_classes
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = base_width
        for i, n in enumerate(layers):
            width = base_width * 2 ** i
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(n):
                ds = None
                if j == 0 and (stride != 1 or cin != width * block.expansion):
                    ds = nn.Sequential(nn.Conv2d(cin, width * block.expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(width * block.expansion))
                blocks.append(block(cin, width, stride if j == 0 else 1, ds))
                cin = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's defaults, so a seeded random-init model is a sensible smoke-test backbone.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised -> features (B, D)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier output (B, num_classes); needs ``num_classes``."""
        if self.fc is None:
            raise RuntimeError("this ResNet was built without an fc head (num_classes=None)")
        return self.fc(self.forward(x))


def resnet(depth: int, base_width: int = 64, num_classes: int | None = None) -> ResNet:
    """Constructor used by the ``BACKBONES`` table."""
    return ResNet(depth=depth, base_width=base_width, num_classes=num_classes)


# -- loading foreign checkpoints -------------------------------------------------------------------

# Keys of SPIN's HMR regressor that sit beside the ResNet trunk in ``checkpoint['model']``; a
# backbone load ignores exactly these (and reports them), anything else unknown is an error.
HMR_REGRESSOR_PREFIXES = ("fc1.", "fc2.", "decpose.", "decshape.", "deccam.", "init_pose",
                          "init_shape", "init_cam", "smpl.")


def _state_and_name(src: str | os.PathLike | Mapping[str, Any], trust: bool,
                    wrapper_keys: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], str, str]:
    if isinstance(src, Mapping):
        obj, where, sha = src, "<state dict>", ""
    else:
        src = resolve_weights(src)  # a zoo name ("resnet50-imagenet-v1", "spin-hmr") or a path
        obj, where = load_checkpoint(src, trust=trust), str(src)
        sha = file_sha256(src)
    state = unwrap_state_dict(obj, where, wrappers=wrapper_keys)
    return state, where, sha


def infer_resnet_depth(state: Mapping[str, torch.Tensor], where: str = "<state dict>") -> tuple[int, int]:
    """(depth, base_width) of a torchvision-layout ResNet state dict, from its block counts."""
    if "conv1.weight" not in state:
        raise CheckpointError(f"{where}: missing key 'conv1.weight'; not a torchvision-layout ResNet")
    counts = []
    for i in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")}
        counts.append(max(idx) + 1 if idx else 0)
    block = Bottleneck if "layer1.0.conv3.weight" in state else BasicBlock
    for depth, (b, layers) in RESNET_LAYERS.items():
        if b is block and tuple(counts) == layers:
            return depth, int(state["conv1.weight"].shape[0])
    raise CheckpointError(f"{where}: block counts {counts} ({block.__name__}) match no ResNet depth "
                          f"in {sorted(RESNET_LAYERS)}")


def _finish(model: ResNet, state: dict[str, torch.Tensor], where: str, sha: str, kind: str,
            ignore: tuple[str, ...]) -> ResNet:
    ignored = load_strict(model, state, where, ignore_unexpected=ignore)
    model.eval()
    model.load_info = {"source": where, "format": kind, "sha256": sha, "ignored_keys": ignored}
    if ignored:
        log.info("%s: loaded the %s backbone, ignored %d non-backbone key(s): %s", where, kind,
                 len(ignored), sorted({k.split(".")[0] for k in ignored}))
    return model


def load_torchvision_resnet(src: str | os.PathLike | Mapping[str, Any], *, strict: bool = True,
                            keep_fc: bool = False, trust: bool = False) -> ResNet:
    """A ResNet from a torchvision checkpoint (file or state dict), depth and width inferred.

    ``fc.*`` is optional: without ``keep_fc`` it is ignored (features only). With ``strict``
    (default) any other unknown key is an error naming it; ``strict=False`` ignores and reports
    unknown keys. Missing or misshaped trunk keys are always errors. The model is in eval mode;
    ``model.load_info`` records the file, its sha256 and the ignored keys.
    """
    state, where, sha = _state_and_name(src, trust, ("state_dict", "model"))
    depth, width = infer_resnet_depth(state, where)
    has_fc = "fc.weight" in state
    num_classes = int(state["fc.weight"].shape[0]) if (keep_fc and has_fc) else None
    model = ResNet(depth, width, num_classes)
    ignore: tuple[str, ...] = () if num_classes else ("fc.",)
    if not strict:
        ignore = ("",)  # every unknown key is reported, none is fatal
    return _finish(model, state, where, sha, "torchvision", ignore)


def load_spin_backbone(src: str | os.PathLike | Mapping[str, Any], *, trust: bool = False) -> ResNet:
    """The ResNet-50 trunk of a SPIN/HMR checkpoint (``{'model': state_dict}``, as used by TCMR and
    VIBE for their features). The regressor (fc1, fc2, decpose, decshape, deccam, init_*) and any
    ``smpl.*`` buffers are ignored and listed in ``model.load_info['ignored_keys']``; every trunk
    key must be present with the right shape, and any other key is an error naming it."""
    state, where, sha = _state_and_name(src, trust, ("model",))
    depth, width = infer_resnet_depth(state, where)
    if depth != 50:
        raise CheckpointError(f"{where}: SPIN/HMR uses ResNet-50, this checkpoint is ResNet-{depth}")
    return _finish(ResNet(50, width, None), state, where, sha, "spin", HMR_REGRESSOR_PREFIXES)
