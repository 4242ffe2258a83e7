"""YOLOX (nano/tiny/s/m/l/x) in plain PyTorch: CSPDarknet + PAFPN + decoupled head.

Module and attribute names reproduce the official state-dict keys (``backbone.backbone.*`` for
CSPDarknet, ``backbone.*`` for the PAFPN neck, ``head.{cls_convs,reg_convs,cls_preds,reg_preds,
obj_preds,stems}``), registered in the official order, so an official checkpoint
(``{"model": state_dict, ...}``) loads strictly with an identity key map.

Sizes are (depth, width) multipliers: nano (0.33, 0.25, depthwise), tiny (0.33, 0.375),
s (0.33, 0.5), m (0.67, 0.75), l (1.0, 1.0), x (1.33, 1.25). :func:`load_yolox` infers them
from tensor shapes (stem width, block counts, presence of depthwise ``dconv`` keys).

Forward in eval mode: (N, 3, S, S) BGR float 0..255 (see ``yolox_preprocess``) -> (N, A, 5 + C)
decoded rows ``[cx, cy, w, h, obj, cls_1..cls_C]`` in input pixels, A = sum over strides 8/16/32
of (S / stride)^2 (3549 at 416, 8400 at 640).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from poselift.core.checkpoints import load_strict

from ..estimators.fastpose import read_state_dict
from .ops import decode_outputs

__all__ = ["YOLOX", "YOLOX_SIZES", "load_yolox", "yolox_config_from_state_dict"]

# (depth, width, depthwise, test size) of the released models.
YOLOX_SIZES: dict[str, tuple[float, float, bool, int]] = {
    "nano": (0.33, 0.25, True, 416), "tiny": (0.33, 0.375, False, 416),
    "s": (0.33, 0.50, False, 640), "m": (0.67, 0.75, False, 640),
    "l": (1.0, 1.0, False, 640), "x": (1.33, 1.25, False, 640),
}

# Set on every BatchNorm at construction by the reference (``init_yolo``), never stored in a
# checkpoint; PyTorch's default eps 1e-5 visibly changes scores and box sizes.
BN_EPS, BN_MOMENTUM = 1e-3, 0.03


class BaseConv(nn.Module):
    """Conv (no bias, 'same' padding) -> BN -> SiLU. Keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise k x k (``dconv``) then pointwise 1x1 (``pconv``), each a BaseConv (nano)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.dconv = BaseConv(cin, cin, k, stride, groups=cin)
        self.pconv = BaseConv(cin, cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def _conv(depthwise: bool):
    return DWConv if depthwise else BaseConv


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (depthwise in nano), residual add when ``shortcut`` and widths agree."""

    def __init__(self, cin: int, cout: int, shortcut: bool, depthwise: bool) -> None:
        super().__init__()
        # CSPLayer builds its bottlenecks with expansion 1.0: hidden == cout.
        self.conv1 = BaseConv(cin, cout, 1, 1)
        self.conv2 = _conv(depthwise)(cout, cout, 3, 1)
        self.use_add = shortcut and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """Two 1x1 branches of width cout/2, n bottlenecks on the first, concat, 1x1 to cout."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True,
                 depthwise: bool = False) -> None:
        super().__init__()
        hidden = int(cout * 0.5)
        self.conv1 = BaseConv(cin, hidden, 1, 1)
        self.conv2 = BaseConv(cin, hidden, 1, 1)
        self.conv3 = BaseConv(2 * hidden, cout, 1, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, depthwise) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class SPPBottleneck(nn.Module):
    """1x1 to cin/2, max-pools 5/9/13 (stride 1) concatenated with their input, 1x1 to cout."""

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = cin // 2
        self.conv1 = BaseConv(cin, hidden, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernels])
        self.conv2 = BaseConv(hidden * (len(kernels) + 1), cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class Focus(nn.Module):
    """Space-to-depth (B, 3, H, W) -> (B, 12, H/2, W/2), then a 3x3 BaseConv (never depthwise).

    Channel blocks in the reference's order: (even row, even col), (odd row, even col),
    (even row, odd col), (odd row, odd col); a different order would scramble the stem weights.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = BaseConv(cin * 4, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)
        return self.conv(x)


class CSPDarknet(nn.Module):
    """Stem + dark2..dark5; returns the dark3/dark4/dark5 maps (strides 8/16/32)."""

    def __init__(self, depth: float, width: float, depthwise: bool = False) -> None:
        super().__init__()
        conv = _conv(depthwise)
        c = int(width * 64)
        n = max(round(depth * 3), 1)
        self.stem = Focus(3, c)
        self.dark2 = nn.Sequential(conv(c, c * 2, 3, 2), CSPLayer(c * 2, c * 2, n, depthwise=depthwise))
        self.dark3 = nn.Sequential(conv(c * 2, c * 4, 3, 2),
                                   CSPLayer(c * 4, c * 4, n * 3, depthwise=depthwise))
        self.dark4 = nn.Sequential(conv(c * 4, c * 8, 3, 2),
                                   CSPLayer(c * 8, c * 8, n * 3, depthwise=depthwise))
        self.dark5 = nn.Sequential(conv(c * 8, c * 16, 3, 2), SPPBottleneck(c * 16, c * 16),
                                   CSPLayer(c * 16, c * 16, n, shortcut=False, depthwise=depthwise))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x3 = self.dark3(self.dark2(self.stem(x)))
        x4 = self.dark4(x3)
        return x3, x4, self.dark5(x4)


class YOLOPAFPN(nn.Module):
    """CSPDarknet + top-down then bottom-up path; outputs strides 8/16/32 at widths 256/512/1024 x w."""

    def __init__(self, depth: float, width: float, depthwise: bool = False) -> None:
        super().__init__()
        c0, c1, c2 = int(256 * width), int(512 * width), int(1024 * width)
        n = round(3 * depth)
        conv = _conv(depthwise)
        self.backbone = CSPDarknet(depth, width, depthwise)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c2, c1, 1, 1)
        self.C3_p4 = CSPLayer(2 * c1, c1, n, False, depthwise)
        self.reduce_conv1 = BaseConv(c1, c0, 1, 1)
        self.C3_p3 = CSPLayer(2 * c0, c0, n, False, depthwise)
        self.bu_conv2 = conv(c0, c0, 3, 2)
        self.C3_n3 = CSPLayer(2 * c0, c1, n, False, depthwise)
        self.bu_conv1 = conv(c1, c1, 3, 2)
        self.C3_n4 = CSPLayer(2 * c1, c2, n, False, depthwise)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x3, x4, x5 = self.backbone(x)
        fpn0 = self.lateral_conv0(x5)
        f0 = self.C3_p4(torch.cat([self.upsample(fpn0), x4], 1))
        fpn1 = self.reduce_conv1(f0)
        pan2 = self.C3_p3(torch.cat([self.upsample(fpn1), x3], 1))
        pan1 = self.C3_n3(torch.cat([self.bu_conv2(pan2), fpn1], 1))
        pan0 = self.C3_n4(torch.cat([self.bu_conv1(pan1), fpn0], 1))
        return pan2, pan1, pan0


class YOLOXHead(nn.Module):
    """Decoupled head per level: 1x1 stem, two 3x3 convs per branch, cls / reg (4) / obj (1) preds.

    Eval output is decoded (see :func:`poselift.extract.detectors.ops.decode_outputs`);
    training (loss assignment) is not implemented: this head is for inference only.
    """

    def __init__(self, num_classes: int, width: float, depthwise: bool = False,
                 strides: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        conv = _conv(depthwise)
        hid = int(256 * width)
        self.num_classes, self.strides = num_classes, tuple(strides)
        # Registration order = the reference's key order in the state dict.
        self.cls_convs, self.reg_convs = nn.ModuleList(), nn.ModuleList()
        self.cls_preds, self.reg_preds, self.obj_preds = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.stems = nn.ModuleList()
        for cin in (int(256 * width), int(512 * width), int(1024 * width)):
            self.stems.append(BaseConv(cin, hid, 1, 1))
            self.cls_convs.append(nn.Sequential(conv(hid, hid, 3, 1), conv(hid, hid, 3, 1)))
            self.reg_convs.append(nn.Sequential(conv(hid, hid, 3, 1), conv(hid, hid, 3, 1)))
            self.cls_preds.append(nn.Conv2d(hid, num_classes, 1))
            self.reg_preds.append(nn.Conv2d(hid, 4, 1))
            self.obj_preds.append(nn.Conv2d(hid, 1, 1))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        outs, sizes = [], []
        for k, x in enumerate(feats):
            x = self.stems[k](x)
            cls = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            reg, obj = self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat)
            outs.append(torch.cat([reg, obj.sigmoid(), cls.sigmoid()], 1).flatten(2))
            sizes.append((x.shape[-2], x.shape[-1]))
        raw = torch.cat(outs, dim=2).permute(0, 2, 1)  # (N, A, 5 + C), level-major, row-major
        return decode_outputs(raw, sizes, self.strides)


class YOLOX(nn.Module):
    """``backbone`` (YOLOPAFPN) + ``head`` (YOLOXHead); see the module docstring for shapes."""

    def __init__(self, depth: float = 0.33, width: float = 0.5, depthwise: bool = False,
                 num_classes: int = 80, test_size: int | None = None) -> None:
        super().__init__()
        self.backbone = YOLOPAFPN(depth, width, depthwise)
        self.head = YOLOXHead(num_classes, width, depthwise)
        self.depth, self.width, self.depthwise = depth, width, depthwise
        # The reference evaluates nano/tiny at 416 and the larger models at 640.
        self.test_size = int(test_size or (416 if width <= 0.375 else 640))

    @classmethod
    def from_name(cls, name: str, num_classes: int = 80) -> "YOLOX":
        if name not in YOLOX_SIZES:
            raise ValueError(f"unknown YOLOX size {name!r}; choose one of {sorted(YOLOX_SIZES)}")
        d, w, dw, size = YOLOX_SIZES[name]
        return cls(d, w, dw, num_classes, size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) with S divisible by 32 -> (N, A, 5 + C) decoded."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(f"YOLOX expects (N, 3, H, W) with H and W divisible by 32, "
                             f"got {tuple(images.shape)}")
        return self.head(self.backbone(images))


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of numbered children ``prefix.<i>.`` present in the state dict."""
    idx = {k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)}
    return len([i for i in idx if i.isdigit()])


def yolox_config_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "<state dict>"
                                 ) -> dict:
    """(depth, width, depthwise, num_classes) from shapes; raises naming the file and key."""
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise KeyError(f"{source}: not a YOLOX state dict, key {key!r} is missing")
        return sd[key]

    stem = need("backbone.backbone.stem.conv.conv.weight")
    if stem.ndim != 4 or stem.shape[1] != 12:
        raise ValueError(f"{source}: key 'backbone.backbone.stem.conv.conv.weight' has shape "
                         f"{tuple(stem.shape)}, expected (C, 12, 3, 3) of the Focus stem")
    width = stem.shape[0] / 64
    depthwise = "backbone.backbone.dark2.0.dconv.conv.weight" in sd
    n_neck = _count(sd, "backbone.C3_p4.m.")
    if n_neck == 0:
        raise KeyError(f"{source}: not a YOLOX state dict, no 'backbone.C3_p4.m.*' keys")
    num_classes = int(need("head.cls_preds.0.weight").shape[0])
    # round(3 * depth) == n_neck and max(round(3 * depth), 1) == backbone blocks for n_neck / 3.
    return {"depth": n_neck / 3, "width": width, "depthwise": depthwise, "num_classes": num_classes}


def load_yolox(path: str | Path, map_location: str | torch.device = "cpu",
               trust: bool = False) -> YOLOX:
    """Build YOLOX from an official checkpoint (``{"model": state_dict}`` or a bare state dict).

    Sizes come from the weights; the load is strict (a clear error names the file and the
    missing/unexpected/misshaped keys). Returns the model in eval mode on ``map_location``.
    ``trust=True`` allows a full unpickle (only for files you trust).
    """
    source = str(path)
    sd = read_state_dict(path, map_location="cpu", trust=trust)
    cfg = yolox_config_from_state_dict(sd, source)
    model = YOLOX(**cfg)
    load_strict(model, sd, source)
    return model.to(map_location).eval()
