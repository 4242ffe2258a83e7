"""Deformable convolution: torchvision semantics in pure PyTorch."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from poselift.extract.deform_conv import (DeformConv2d, bilinear_sample_zero, deform_conv2d,
                                          deform_conv2d_torch)


def _bilinear_ref(img, y: float, x: float) -> float:
    """torchvision's scalar corner rule, written independently of the vectorised code."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = y0 + 1, x0 + 1
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x1, (1 - ly) * lx),
                       (y1, x0, ly * (1 - lx)), (y1, x1, ly * lx)):
        if 0 <= yy <= h - 1 and 0 <= xx <= w - 1:
            val += wt * float(img[yy, xx])
    return val


def _loop_ref(inp, off, wgt, bias, stride, pad, dil, mask):
    b, c, h, w = inp.shape
    co, cpg, kh, kw = wgt.shape
    k = kh * kw
    og = off.shape[1] // (2 * k)
    ho, wo = off.shape[2], off.shape[3]
    wg = c // cpg
    out = torch.zeros(b, co, ho, wo, dtype=torch.float64)
    for n in range(b):
        for o in range(co):
            g = o // (co // wg)
            for yo in range(ho):
                for xo in range(wo):
                    acc = float(bias[o]) if bias is not None else 0.0
                    for ci in range(cpg):
                        cin = g * cpg + ci
                        grp = cin // (c // og)
                        for i in range(kh):
                            for j in range(kw):
                                t = i * kw + j
                                dy = float(off[n, grp * 2 * k + 2 * t, yo, xo])
                                dx = float(off[n, grp * 2 * k + 2 * t + 1, yo, xo])
                                y = yo * stride[0] - pad[0] + i * dil[0] + dy
                                x = xo * stride[1] - pad[1] + j * dil[1] + dx
                                v = _bilinear_ref(inp[n, cin], y, x)
                                if mask is not None:
                                    v *= float(mask[n, grp * k + t, yo, xo])
                                acc += v * float(wgt[o, ci, i, j])
                    out[n, o, yo, xo] = acc
    return out


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), ((2, 1), (1, 3), (1, 2), 4)])
def test_zero_offset_unit_mask_equals_conv2d(stride, padding, dilation, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=g)
    wgt = torch.randn(12, 8 // groups, 3, 3, generator=g)
    bias = torch.randn(12, generator=g)
    ref = F.conv2d(x, wgt, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    for og in (1, 2):
        off = torch.zeros(2, 2 * og * 9, ref.shape[2], ref.shape[3])
        mask = torch.ones(2, og * 9, ref.shape[2], ref.shape[3])
        out = deform_conv2d_torch(x, off, wgt, bias, stride, padding, dilation, mask)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
        out_nomask = deform_conv2d_torch(x, off, wgt, bias, stride, padding, dilation)
        torch.testing.assert_close(out_nomask, ref, atol=2e-5, rtol=1e-5)


def test_random_offsets_match_scalar_loop_with_groups_and_out_of_range():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    wgt = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)  # 2 weight groups
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    stride, pad, dil = (2, 1), (1, 2), (1, 2)
    ho = (5 + 2 - 3) // 2 + 1
    wo = (6 + 4 - 5) // 1 + 1
    og = 2
    # Offsets up to +-4 px push many samples into the (-1, 0) band and fully outside.
    off = (torch.rand(2, 2 * og * 9, ho, wo, generator=g, dtype=torch.float64) - 0.5) * 8
    off[0, 0, 0, 0] = -1.0 - 2.0  # sample lands exactly on y = -1 -> zero
    mask = torch.rand(2, og * 9, ho, wo, generator=g, dtype=torch.float64) * 2 - 0.5  # signed, raw
    out = deform_conv2d_torch(x, off, wgt, bias, stride, pad, dil, mask)
    ref = _loop_ref(x, off, wgt, bias, stride, pad, dil, mask)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    # float32 path against the same reference at the documented ~1e-5 level
    out32 = deform_conv2d_torch(x.float(), off.float(), wgt.float(), bias.float(), stride, pad, dil, mask.float())
    torch.testing.assert_close(out32.double(), ref, atol=2e-5, rtol=1e-5)


def test_bilinear_sample_zero_border_rule():
    img = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4) + 1
    ys = torch.tensor([[-1.0, -0.5, 0.0, 2.5, 3.0, 1.25, -1.2, 0.0]], dtype=torch.float64)
    xs = torch.tensor([[0.0, 1.0, -0.25, 3.0, 0.0, 2.75, 0.0, 4.0]], dtype=torch.float64)
    got = bilinear_sample_zero(img, ys, xs)[0, 0]
    want = torch.tensor([_bilinear_ref(img[0, 0], float(y), float(x)) for y, x in zip(ys[0], xs[0])],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want)
    assert got[0] == 0 and got[4] == 0 and got[6] == 0 and got[7] == 0
    assert got[1] == pytest.approx(0.5 * 2.0)  # half weight of pixel (0, 1) = 2


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    wgt = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    # Fractional offsets away from integer corners: floor() is non-differentiable there.
    off = (0.1 + 0.8 * torch.rand(1, 2 * 2 * 9, 4, 4, generator=g, dtype=torch.float64))
    off = (off * torch.where(torch.rand(off.shape, generator=g) > 0.5, 1.0, -1.0).double()).requires_grad_()
    mask = torch.rand(1, 2 * 9, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x, off, mask, wgt, bias):
        return deform_conv2d_torch(x, off, wgt, bias, 1, 1, 1, mask)

    assert torch.autograd.gradcheck(fn, (x, off, mask, wgt, bias), eps=1e-6, atol=1e-5)


def test_module_parameter_layout_and_dispatch():
    m = DeformConv2d(12, 8, 3, padding=3, dilation=3)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert m.weight.shape == (8, 12, 3, 3)
    x = torch.randn(1, 12, 7, 5)
    off = torch.randn(1, 2 * 4 * 9, 7, 5)  # 4 offset groups inferred from channels
    mask = torch.rand(1, 4 * 9, 7, 5)
    torch.testing.assert_close(m(x, off, mask), deform_conv2d_torch(x, off, m.weight, m.bias, 1, 3, 3, mask))
    torch.testing.assert_close(deform_conv2d(x, off, m.weight, m.bias, 1, 3, 3, mask),
                               deform_conv2d_torch(x, off, m.weight, m.bias, 1, 3, 3, mask))


def test_bad_shapes_are_named():
    x = torch.randn(1, 6, 5, 5)
    w = torch.randn(4, 6, 3, 3)
    with pytest.raises(ValueError, match="offset has 17 channels"):
        deform_conv2d_torch(x, torch.zeros(1, 17, 3, 3), w)
    with pytest.raises(ValueError, match="offset groups"):
        deform_conv2d_torch(x, torch.zeros(1, 2 * 4 * 9, 3, 3), w)
    with pytest.raises(ValueError, match="mask shape"):
        deform_conv2d_torch(x, torch.zeros(1, 18, 3, 3), w, mask=torch.ones(1, 8, 3, 3))


def test_half_precision_computes_in_float32():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 6, 6, generator=g)
    w = torch.randn(4, 4, 3, 3, generator=g)
    off = torch.randn(1, 18, 6, 6, generator=g)
    ref = deform_conv2d_torch(x, off, w, None, 1, 1, 1)
    out = deform_conv2d(x.bfloat16(), off.bfloat16(), w.bfloat16(), None, 1, 1, 1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.3, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 9, 9, generator=g)
    w = torch.randn(8, 8, 3, 3, generator=g)
    off = torch.randn(2, 2 * 2 * 9, 9, 9, generator=g) * 2
    mask = torch.rand(2, 2 * 9, 9, 9, generator=g)
    ref = deform_conv2d_torch(x, off, w, None, 1, 1, 1, mask)
    out = deform_conv2d(x.cuda(), off.cuda(), w.cuda(), None, 1, 1, 1, mask.cuda())
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)
