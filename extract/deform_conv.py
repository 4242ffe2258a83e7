"""Modulated deformable convolution (DCNv1/v2) in plain PyTorch.

Semantics follow ``torchvision.ops.deform_conv2d`` exactly, so that weights and
offset/mask predictors trained against torchvision load unchanged:

* ``offset`` is (B, 2*G*kh*kw, Ho, Wo) laid out as [offset_group][tap][dy, dx],
  taps in row-major kernel order (tap = i*kw + j);
* ``mask`` is (B, G*kh*kw, Ho, Wo) laid out as [offset_group][tap] and multiplies
  the sampled value *before* the weight;
* the sampling point of output (ho, wo), tap (i, j) is
  ``(ho*sh - ph + i*dh + dy, wo*sw - pw + j*dw + dx)``; bilinear interpolation
  treats everything outside the image as zero (a point in (-1, H) x (-1, W) still
  gets the weight of its in-range corners, farther points give 0);
* weight groups = C_in / weight.shape[1], offset groups = offset.shape[1] / (2*kh*kw).

When ``torchvision.ops.deform_conv2d`` imports (a GPU install with matching
builds) it is used; otherwise the pure implementation below runs. The pure path
is autograd-differentiable w.r.t. input, offset, mask, weight and bias.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["deform_conv2d", "deform_conv2d_torch", "bilinear_sample_zero", "DeformConv2d"]

_Pair = int | tuple[int, int]
_TV_OP: object | None = None  # cached torchvision op, False when unavailable


def _pair(v: _Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _torchvision_op():
    """torchvision's deform_conv2d, or None. Imported lazily: on CPU-only torch the
    PyPI wheel fails at import time (its _C links CUDA libraries)."""
    global _TV_OP
    if _TV_OP is None:
        try:
            from torchvision.ops import deform_conv2d as op  # type: ignore

            _TV_OP = op
        except Exception:  # ImportError, RuntimeError (operator torchvision::nms missing), ...
            _TV_OP = False
    return _TV_OP or None


def bilinear_sample_zero(inp: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``inp`` at pixel coordinates, zero outside the image.

    inp: (N, C, H, W); y, x: (N, P) pixel coordinates (pixel centres at integers).
    Returns (N, C, P). Matches torchvision's deform-conv corner rules: corners outside
    [0, H-1] x [0, W-1] contribute 0, so the result fades to 0 over (-1, 0) and (H-1, H).
    """
    n, c, h, w = inp.shape
    # Zero-pad by one pixel and clamp indices into the padded frame: any corner that
    # falls outside the image then reads a zero, without four validity masks.
    padded = F.pad(inp, (1, 1, 1, 1)).reshape(n, c, (h + 2) * (w + 2))
    y0f = torch.floor(y)
    x0f = torch.floor(x)
    ly, lx = y - y0f, x - x0f
    hy, hx = 1.0 - ly, 1.0 - lx
    y0 = (y0f.long() + 1).clamp_(0, h + 1)
    x0 = (x0f.long() + 1).clamp_(0, w + 1)
    y1 = (y0f.long() + 2).clamp_(0, h + 1)
    x1 = (x0f.long() + 2).clamp_(0, w + 1)
    # Points at or beyond -1 / H are zero in torchvision even where a clamped corner
    # would land on a real pixel (e.g. y = -1.5 -> corners -2, -1 -> both padding rows
    # already); the explicit mask also covers huge offsets that clamp onto the image.
    inside = ((y > -1) & (y < h) & (x > -1) & (x < w)).to(inp.dtype)
    stride = w + 2

    def gather(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        idx = (yi * stride + xi).unsqueeze(1).expand(n, c, yi.shape[-1])
        return torch.gather(padded, 2, idx)

    out = (gather(y0, x0) * (hy * hx).unsqueeze(1) + gather(y0, x1) * (hy * lx).unsqueeze(1)
           + gather(y1, x0) * (ly * hx).unsqueeze(1) + gather(y1, x1) * (ly * lx).unsqueeze(1))
    return out * inside.unsqueeze(1)


def deform_conv2d_torch(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Pair = 1,
    padding: _Pair = 0,
    dilation: _Pair = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch modulated deformable conv; same arguments and result as torchvision.

    input (B, C, H, W); offset (B, 2*G*kh*kw, Ho, Wo); weight (Co, C/g, kh, kw);
    mask (B, G*kh*kw, Ho, Wo) or None; returns (B, Co, Ho, Wo).
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    b, c, h, w = input.shape
    co, cpg, kh, kw = weight.shape
    k = kh * kw
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if cpg == 0 or c % cpg != 0:
        raise ValueError(f"deform_conv2d: input channels {c} not divisible by weight.shape[1]={cpg}")
    wgroups = c // cpg
    if co % wgroups != 0:
        raise ValueError(f"deform_conv2d: out channels {co} not divisible by {wgroups} weight groups")
    if offset.shape[1] % (2 * k) != 0 or offset.shape[1] == 0:
        raise ValueError(f"deform_conv2d: offset has {offset.shape[1]} channels, not a multiple of 2*{k}")
    og = offset.shape[1] // (2 * k)
    if c % og != 0:
        raise ValueError(f"deform_conv2d: input channels {c} not divisible by {og} offset groups")
    if tuple(offset.shape[2:]) != (ho, wo) or offset.shape[0] != b:
        raise ValueError(f"deform_conv2d: offset shape {tuple(offset.shape)} does not match output "
                         f"({b}, *, {ho}, {wo})")
    if mask is not None and (mask.shape[1] != og * k or tuple(mask.shape[2:]) != (ho, wo)):
        raise ValueError(f"deform_conv2d: mask shape {tuple(mask.shape)}, expected ({b}, {og * k}, {ho}, {wo})")

    dt = input.dtype
    off = offset.to(dt).reshape(b, og, k, 2, ho * wo)
    tap_i = torch.arange(kh, device=input.device, dtype=dt).repeat_interleave(kw) * dh  # (k,)
    tap_j = torch.arange(kw, device=input.device, dtype=dt).repeat(kh) * dw
    base_y = torch.arange(ho, device=input.device, dtype=dt) * sh - ph
    base_x = torch.arange(wo, device=input.device, dtype=dt) * sw - pw
    grid_y = (base_y[:, None].expand(ho, wo)).reshape(1, 1, 1, ho * wo) + tap_i.view(1, 1, k, 1)
    grid_x = (base_x[None, :].expand(ho, wo)).reshape(1, 1, 1, ho * wo) + tap_j.view(1, 1, k, 1)
    py = (grid_y + off[:, :, :, 0]).reshape(b * og, k * ho * wo)
    px = (grid_x + off[:, :, :, 1]).reshape(b * og, k * ho * wo)
    cg = c // og
    cols = bilinear_sample_zero(input.reshape(b * og, cg, h, w), py, px)  # (B*og, cg, k*L)
    cols = cols.reshape(b, og, cg, k, ho * wo)
    if mask is not None:
        cols = cols * mask.to(dt).reshape(b, og, 1, k, ho * wo)
    # Channel index is og*cg + cg_i, which is the input-channel order; the weight
    # flattens (C/g, kh, kw) as c*k + tap, the same order as (C, k) below.
    cols = cols.reshape(b, wgroups, cpg * k, ho * wo)
    wmat = weight.to(dt).reshape(wgroups, co // wgroups, cpg * k)
    out = torch.einsum("gok,bgkl->bgol", wmat, cols).reshape(b, co, ho, wo)
    if bias is not None:
        out = out + bias.to(dt).view(1, co, 1, 1)
    return out


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Pair = 1,
    padding: _Pair = 0,
    dilation: _Pair = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` when available, else :func:`deform_conv2d_torch`.

    Shapes as in :func:`deform_conv2d_torch`. Half/bfloat16 inputs (AMP) are computed
    in float32 and cast back, as torchvision's autocast rule does, because bilinear
    weights and 9*C-term sums lose too much precision in 16-bit.
    """
    op = _torchvision_op()
    if op is not None:
        return op(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    if input.dtype in (torch.float16, torch.bfloat16):
        with torch.autocast(device_type=input.device.type, enabled=False):
            out = deform_conv2d_torch(input.float(), offset.float(), weight.float(),
                                      None if bias is None else bias.float(), stride, padding,
                                      dilation, None if mask is None else mask.float())
        return out.to(input.dtype)
    return deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask)


class DeformConv2d(nn.Module):
    """Deformable conv layer with torchvision's parameter names (``weight``, ``bias``).

    forward(x (B, C, H, W), offset (B, 2*G*kh*kw, Ho, Wo), mask (B, G*kh*kw, Ho, Wo) | None)
    -> (B, Co, Ho, Wo). Offset groups G come from the offset's channel count.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Pair, stride: _Pair = 1,
                 padding: _Pair = 0, dilation: _Pair = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"DeformConv2d: channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same default init as torchvision's layer (Kaiming-uniform with a=sqrt(5)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")
