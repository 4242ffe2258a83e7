"""FastDropout: torch's CPU dropout semantics with a cheaper mask (poselift.core.dropout)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from poselift.core.dropout import FastDropout, dropout_mask
from poselift.lifting.videopose3d.model import TemporalModelOptimized1f

N = 200_000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
@pytest.mark.parametrize("p", [0.25, 0.5, 0.1, 0.7])
def test_mask_rate_and_values_follow_torch(p, dtype):
    torch.manual_seed(0)
    m = dropout_mask((N,), p, dtype)
    assert m.dtype == dtype and m.shape == (N,)
    dropped = float((m == 0).double().mean())
    # 5 binomial standard deviations: holds for any seed on any machine.
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / N)
    kept = m[m != 0].unique()
    assert kept.numel() == 1
    # The scale is held in the input's dtype, as torch's CPU dropout holds it (bf16 rounds
    # 4/3 to 1.3359375 in both); for p off the 1/256 grid the drawn rate differs by < 8e-6.
    assert float(kept) == pytest.approx(float(torch.tensor(1 / (1 - p), dtype=dtype)),
                                        rel=2e-5 if dtype in (torch.float32, torch.float64) else 0)


def test_masks_are_reproducible_under_manual_seed_and_differ_between_calls():
    torch.manual_seed(3)
    a, b = dropout_mask((4096,), 0.25, torch.float32), dropout_mask((4096,), 0.25, torch.float32)
    torch.manual_seed(3)
    a2 = dropout_mask((4096,), 0.25, torch.float32)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)
    # Independent masks agree on about p^2 + (1-p)^2 of the elements, not on all.
    agree = float(((a == 0) == (b == 0)).double().mean())
    assert abs(agree - (0.25 ** 2 + 0.75 ** 2)) < 0.05


def test_forward_backward_and_eval():
    d = FastDropout(0.25)
    assert isinstance(d, nn.Dropout) and d.state_dict() == {}
    x = torch.randn(64, 9, 128, requires_grad=True)
    y = d(x)
    mask = (y / x).detach()
    keep = y != 0
    assert torch.allclose(mask[keep], torch.full_like(mask[keep], 4 / 3))
    y.sum().backward()
    # d(x * mask)/dx = mask: zero where dropped, the scale where kept.
    assert torch.equal(x.grad == 0, ~keep)
    assert torch.allclose(x.grad[keep], torch.full_like(x.grad[keep], 4 / 3))
    d.eval()
    assert torch.equal(d(x), x)


def test_bf16_autocast_activation_keeps_its_dtype():
    d = FastDropout(0.5)
    x = torch.randn(32, 256).bfloat16()
    y = d(x)
    assert y.dtype == torch.bfloat16
    assert set(torch.unique(y[y != 0] / x[y != 0]).tolist()) == {2.0}


def test_unsupported_cases_take_torchs_path():
    x = torch.randn(1000)
    assert torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))
    y = x.clone()
    out = FastDropout(0.5, inplace=True)(y)
    assert out.data_ptr() == y.data_ptr()  # torch's in-place dropout
    with pytest.raises(ValueError, match="no fast path"):
        dropout_mask((3,), 0.5, torch.int32)
    with pytest.raises(ValueError, match="p must be"):
        dropout_mask((3,), 1.0, torch.float32)


def test_lifter_training_forward_is_reproducible_under_a_seed():
    torch.manual_seed(0)
    kw = dict(num_joints_in=5, in_features=2, num_joints_out=5, filter_widths=[3, 3], channels=16)
    for impl in ("gemm", "conv"):
        model = TemporalModelOptimized1f(**kw, impl=impl)
        assert isinstance(model.drop, FastDropout)
        x = torch.randn(7, 9, 5, 2)
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(1)
        assert torch.equal(model(x), a)
        torch.manual_seed(2)
        assert not torch.allclose(model(x), a, atol=1e-3)  # the masks follow the stream
        model.eval()
        assert torch.equal(model(x), model(x))  # no dropout in evaluation
