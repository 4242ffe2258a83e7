"""FAMI-Pose (CVPR 2022): temporal feature alignment head over a frozen HRNet.

Two configurations share one topology and the release's parameter names:

* ``RELEASE`` reproduces the public ``Alignment_V15`` model: the global transformation
  module (GTM) predicts a 2-parameter translation (three Linear layers with no
  nonlinearity in between), the local calibration module (LCM) uses its predicted
  deformable-conv masks raw (signed, unbounded), and head weights start from the
  release's init (conv N(0, 1e-3), BN (1, 0), biases 0, Linear/DCN weights default).
* ``PAPER`` follows the paper: GTM predicts a full 2x3 affine with identity init (last
  Linear zero, bias = identity), and masks go through a sigmoid as in DCNv2.

Data flow (S = 4 supporting frames t-2, t-1, t+1, t+2; C = backbone width, 48 for W48;
h, w = feature size, 96x72 for 384x288 crops):
key/supporting crops -> frozen HRNet -> z_t (B, C, h, w), z_s (B, S, C, h, w)
GTM(z_s - z_t) -> warp z_s -> concat (B, S*C) -> ``sup_agg_block`` -> agg_sup (B, C)
combined = block([agg_sup, z_t]); c1 = DCN1(combined); c2 = DCN2(c1);
a3 = DCN3(agg_sup; offsets/masks from c2); a4 = DCN4(a3)
all_agg = ``init_feature_agg_block``([z_t, a4]); heatmaps = ``agg_final_layer``(all_agg).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from poselift.extract.deform_conv import DeformConv2d, bilinear_sample_zero
from poselift.extract.estimators.hrnet import (BasicBlock, CheckpointError, HRNet, extract_state_dict,
                                               infer_hrnet_config, load_state_dict_strict, read_checkpoint)

__all__ = ["FamiConfig", "RELEASE", "PAPER", "FamiOutput", "FAMIPose", "supporting_indices",
           "warp_translation", "warp_affine_normalized", "load_famipose", "ESTIMATORS"]


@dataclass(frozen=True)
class FamiConfig:
    """Head variant. ``gtm``: "translation" (release) or "affine" (paper);
    ``mask``: "raw" (release) or "sigmoid" (paper); ``feature_size``: (h, w) of the
    backbone feature, which fixes the GTM's Linear input (16 * 3 * 3 for 96x72)."""

    gtm: str = "translation"
    mask: str = "raw"
    gtm_identity_init: bool = False
    offset_groups: int = 12
    gtm_channels: int = 16
    gtm_hidden: int = 64
    num_supporting: int = 4
    feature_size: tuple[int, int] = (96, 72)
    freeze_backbone: bool = True

    def __post_init__(self) -> None:
        if self.gtm not in ("translation", "affine"):
            raise ValueError(f"FamiConfig.gtm must be 'translation' or 'affine', got {self.gtm!r}")
        if self.mask not in ("raw", "sigmoid"):
            raise ValueError(f"FamiConfig.mask must be 'raw' or 'sigmoid', got {self.mask!r}")


RELEASE = FamiConfig()
PAPER = FamiConfig(gtm="affine", mask="sigmoid", gtm_identity_init=True)


def supporting_indices(key: int, length: int, offsets: tuple[int, ...] = (-2, -1, 1, 2)) -> list[int]:
    """Frame indices of the supporting frames of ``key`` in a sequence of ``length``.

    Border rule of the reference: a missing earlier frame becomes the key frame; a
    missing later frame becomes key+1 when that exists, else the key frame.
    """
    if not 0 <= key < length:
        raise ValueError(f"key index {key} outside a sequence of length {length}")
    out = []
    for off in offsets:
        j = key + off
        if off < 0 and j < 0:
            j = key
        elif off > 0 and j > length - 1:
            j = key + 1 if key + 1 <= length - 1 else key
        out.append(j)
    return out


def _pixel_grid(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, device=like.device, dtype=like.dtype).view(h, 1).expand(h, w).reshape(1, h * w)
    xs = torch.arange(w, device=like.device, dtype=like.dtype).view(1, w).expand(h, w).reshape(1, h * w)
    return ys, xs


def warp_translation(feat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """aligned(x, y) = feat(x - t_x, y - t_y), bilinear, zero outside.

    feat (B, C, h, w); t (B, 2) = (t_x, t_y) in feature pixels. Equals kornia's
    ``warp_affine`` with [[1, 0, t_x], [0, 1, t_y]] used by the release.
    """
    b, c, h, w = feat.shape
    ys, xs = _pixel_grid(h, w, feat)
    return bilinear_sample_zero(feat, ys - t[:, 1:2], xs - t[:, 0:1]).reshape(b, c, h, w)


def warp_affine_normalized(feat: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Spatial-transformer warp: output point p (normalised, align_corners=True, centre 0)
    samples feat at theta @ [p, 1]. feat (B, C, h, w); theta (B, 2, 3). Identity theta
    returns feat exactly; equals ``grid_sample(affine_grid(theta), align_corners=True)``."""
    b, c, h, w = feat.shape
    ys, xs = _pixel_grid(h, w, feat)
    # theta rewritten in pixel units, so that an identity theta gives exactly x, y
    # (normalising and un-normalising would leave ~1e-6 bilinear bleed).
    sw, sh = max(w - 1, 1) / 2.0, max(h - 1, 1) / 2.0
    t = theta.unsqueeze(-1)  # (B, 2, 3, 1)
    sx = t[:, 0, 0] * xs + t[:, 0, 1] * (sw / sh) * ys + sw * (t[:, 0, 2] + 1.0 - t[:, 0, 0] - t[:, 0, 1])
    sy = t[:, 1, 0] * (sh / sw) * xs + t[:, 1, 1] * ys + sh * (t[:, 1, 2] + 1.0 - t[:, 1, 0] - t[:, 1, 1])
    return bilinear_sample_zero(feat, sy, sx).reshape(b, c, h, w)


class BasicBlockChain(nn.Module):
    """``num_blocks`` BasicBlocks, the first with a 1x1+BN projection (always, as in the
    reference). (B, Cin, h, w) -> (B, Cout, h, w); parameters under ``layers.*``."""

    def __init__(self, cin: int, cout: int, num_blocks: int) -> None:
        super().__init__()
        proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=0.1))
        self.layers = nn.Sequential(BasicBlock(cin, cout, 1, proj), *[BasicBlock(cout, cout) for _ in range(num_blocks - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvLayer(nn.Module):
    """conv (with bias) [+ BN] [+ ReLU]; parameters ``conv.*`` and, if used, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                 bn: bool = True, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=True)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.relu is None else self.relu(x)


def _halvings(n: int, times: int) -> int:
    for _ in range(times):
        n = (n - 1) // 2 + 1  # conv3x3, stride 2, padding 1
    return n


@dataclass
class FamiOutput:
    """Head outputs and intermediates (for loss terms and stage-by-stage parity).

    heatmaps (B, J, h, w); key_heatmaps (B, J, h, w) from the backbone; gtm_params
    (B, S, 2) translations or (B, S, 2, 3) affines; warped (B, S, C, h, w); the
    features (B, C, h, w): key_feat, agg_sup_feat, combined_feat, aligned_sup_feat,
    all_agg_features.
    """

    heatmaps: torch.Tensor
    key_heatmaps: torch.Tensor | None
    gtm_params: torch.Tensor
    warped: torch.Tensor
    key_feat: torch.Tensor
    agg_sup_feat: torch.Tensor
    combined_feat: torch.Tensor
    aligned_sup_feat: torch.Tensor
    all_agg_features: torch.Tensor


class FAMIPose(nn.Module):
    """FAMI-Pose: frozen HRNet (``hrnet.*``) plus the alignment head (release key names).

    forward(key (B, 3, H, W), sup (B, 3*S, H, W) or (B, S, 3, H, W)) -> FamiOutput.
    """

    def __init__(self, backbone: HRNet, num_joints: int = 17, config: FamiConfig = RELEASE) -> None:
        super().__init__()
        c, cfg = backbone.width, config
        if c % cfg.offset_groups:
            raise ValueError(f"backbone width {c} not divisible by {cfg.offset_groups} offset groups")
        self.config, self.num_joints, self.channels = cfg, num_joints, c
        self.hrnet = backbone
        g = cfg.gtm_channels
        fh, fw = (_halvings(n, 5) for n in cfg.feature_size)
        n_out = 2 if cfg.gtm == "translation" else 6
        self.feat_global_offset_layers = nn.Sequential(
            BasicBlockChain(c, g, 1), *[ConvLayer(g, g, 3, 2, 1) for _ in range(5)], nn.Flatten(),
            nn.Linear(g * fh * fw, cfg.gtm_hidden), nn.Linear(cfg.gtm_hidden, cfg.gtm_hidden),
            nn.Linear(cfg.gtm_hidden, n_out))
        n_off, n_mask = 2 * 9 * cfg.offset_groups, 9 * cfg.offset_groups
        self.combined_feat_layers = BasicBlockChain(2 * c, c, 1)
        for i in range(1, 5):
            setattr(self, f"dcn_offset_{i}", ConvLayer(c, n_off, 3, 1, 3, 3, bn=False, relu=False))
            setattr(self, f"dcn_mask_{i}", ConvLayer(c, n_mask, 3, 1, 3, 3, bn=False, relu=False))
            setattr(self, f"dcn_{i}", DeformConv2d(c, c, 3, padding=3, dilation=3))
        self.sup_agg_block = BasicBlockChain(cfg.num_supporting * c, c, 2)
        self.init_feature_agg_block = BasicBlockChain(2 * c, c, 3)
        self.agg_final_layer = nn.Conv2d(c, num_joints, 3, 1, 1)
        self.init_head_weights()
        if cfg.freeze_backbone:
            for p in self.hrnet.parameters():
                p.requires_grad_(False)
            self.hrnet.eval()

    def head_modules(self) -> list[nn.Module]:
        return [m for name, m in self.named_children() if name != "hrnet"]

    def init_head_weights(self) -> None:
        """Release init for the head; the paper config then makes the GTM an identity."""
        for top in self.head_modules():
            for m in top.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.001)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Linear, DeformConv2d)) and m.bias is not None:
                    nn.init.zeros_(m.bias)  # weights keep PyTorch's / torchvision's default
        if self.config.gtm_identity_init:
            last = self.feat_global_offset_layers[-1]
            nn.init.zeros_(last.weight)
            with torch.no_grad():
                last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]) if last.out_features == 6 else torch.zeros(2))

    def train(self, mode: bool = True) -> "FAMIPose":
        super().train(mode)
        if self.config.freeze_backbone:
            self.hrnet.eval()  # frozen BN statistics must not drift while the head trains
        return self

    # ------------------------------------------------------------------ stages
    def gtm(self, sup_feat: torch.Tensor, key_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) x2 -> (params (B, 2) or (B, 2, 3), warped supporting feature (B, C, h, w))."""
        out = self.feat_global_offset_layers(sup_feat - key_feat)
        if self.config.gtm == "translation":
            return out, warp_translation(sup_feat, out)
        theta = out.view(-1, 2, 3)
        return theta, warp_affine_normalized(sup_feat, theta)

    def _dcn(self, i: int, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        offset = getattr(self, f"dcn_offset_{i}")(guide)
        mask = getattr(self, f"dcn_mask_{i}")(guide)
        if self.config.mask == "sigmoid":
            mask = torch.sigmoid(mask)
        return getattr(self, f"dcn_{i}")(x, offset, mask)

    def forward_from_features(self, key_feat: torch.Tensor, sup_feats: torch.Tensor,
                              key_heatmaps: torch.Tensor | None = None) -> FamiOutput:
        """Head only, on cached backbone features: key_feat (B, C, h, w), sup_feats (B, S, C, h, w)."""
        b, s = sup_feats.shape[:2]
        if s != self.config.num_supporting:
            raise ValueError(f"expected {self.config.num_supporting} supporting frames, got {s}")
        params, warped = zip(*(self.gtm(sup_feats[:, i], key_feat) for i in range(s)))
        agg_sup = self.sup_agg_block(torch.cat(warped, dim=1))
        combined = self.combined_feat_layers(torch.cat([agg_sup, key_feat], dim=1))
        c1 = self._dcn(1, combined, combined)
        c2 = self._dcn(2, c1, c1)
        a3 = self._dcn(3, agg_sup, c2)
        a4 = self._dcn(4, a3, a3)
        all_agg = self.init_feature_agg_block(torch.cat([key_feat, a4], dim=1))
        return FamiOutput(heatmaps=self.agg_final_layer(all_agg), key_heatmaps=key_heatmaps,
                          gtm_params=torch.stack(params, dim=1), warped=torch.stack(warped, dim=1),
                          key_feat=key_feat, agg_sup_feat=agg_sup, combined_feat=combined,
                          aligned_sup_feat=a4, all_agg_features=all_agg)

    def backbone_features(self, key: torch.Tensor, sup: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run key and supporting crops through the backbone in one batch (key first, then
        frame 1 of every sample, frame 2, ... as the release stacks them).
        Returns key heatmaps (B, J, h, w), key feature (B, C, h, w), sup features (B, S, C, h, w)."""
        b = key.shape[0]
        if sup.dim() == 4:
            sup = sup.reshape(b, -1, 3, *sup.shape[2:])
        s = sup.shape[1]
        x = torch.cat([key, sup.transpose(0, 1).reshape(s * b, *sup.shape[2:])], dim=0)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            hm, feat = self.hrnet.forward_features(x)
        sup_feat = feat[b:].reshape(s, b, *feat.shape[1:]).transpose(0, 1)
        return hm[:b], feat[:b], sup_feat

    def forward(self, key: torch.Tensor, sup: torch.Tensor) -> FamiOutput:
        key_hm, key_feat, sup_feat = self.backbone_features(key, sup)
        return self.forward_from_features(key_feat, sup_feat, key_hm)


ESTIMATORS: dict[str, Any] = {
    "famipose_release": partial(FAMIPose, config=RELEASE),
    "famipose_paper": partial(FAMIPose, config=PAPER),
}


def load_famipose(path_or_state_dict: str | Path | Mapping[str, torch.Tensor], config: FamiConfig = RELEASE,
                  trust: bool = False) -> FAMIPose:
    """Build FAMI-Pose (backbone widths inferred from ``hrnet.*``) and load it strictly.

    Accepts ``epoch_N_state.pth`` (``state_dict`` entry, ``module.`` stripped) or a
    plain state dict. Errors name the file and the missing/unexpected/misshaped keys.
    The model is returned in eval mode.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "state dict"
        sd = extract_state_dict(path_or_state_dict, source)
    else:
        source = str(path_or_state_dict)
        sd = extract_state_dict(read_checkpoint(path_or_state_dict, trust), source)
    bb = {k[6:]: v for k, v in sd.items() if k.startswith("hrnet.")}
    if not bb:
        raise CheckpointError(f"{source}: no 'hrnet.*' keys (not a FAMI-Pose checkpoint)")
    bcfg = infer_hrnet_config(bb, source)
    if "agg_final_layer.weight" not in sd:
        raise CheckpointError(f"{source}: missing key 'agg_final_layer.weight'")
    model = FAMIPose(HRNet(**bcfg), int(sd["agg_final_layer.weight"].shape[0]), config)
    load_state_dict_strict(model, sd, source)
    return model.eval()
