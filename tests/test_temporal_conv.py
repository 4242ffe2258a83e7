"""VideoPose3D temporal-conv models: layout, receptive fields, strided twin, causality."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from poselift.lifting.videopose3d.model import (
    TemporalModel,
    TemporalModelOptimized1f,
    bn_momentum_schedule,
    level_dilations,
    level_pads,
    receptive_field_of,
)

torch.set_num_threads(2)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so eval-mode comparisons exercise every BN layer."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("widths,joints,expected", [
    ((3, 3, 3), 17, 8_555_571),
    ((3, 3, 3, 3), 17, 12_753_971),
    ((3, 3, 3, 3, 3), 17, 16_952_371),
    ((3, 3, 3), 15, 8_537_133),
])
def test_param_counts_match_reference(widths, joints, expected):
    with torch.device("meta"):  # no allocation: only shapes matter
        full = TemporalModel(joints, 2, joints, widths, channels=1024)
        fast = TemporalModelOptimized1f(joints, 2, joints, widths, channels=1024)
    assert _n_params(full) == expected
    assert _n_params(fast) == expected


def test_each_block_adds_4c2_plus_4c():
    with torch.device("meta"):
        a = TemporalModel(17, 2, 17, (3, 3), channels=1024)
        b = TemporalModel(17, 2, 17, (3, 3, 3), channels=1024)
    assert _n_params(b) - _n_params(a) == 4 * 1024**2 + 4 * 1024 == 4_198_400


def test_dense_param_counts_and_kernels():
    with torch.device("meta"):
        dense = TemporalModel(17, 2, 17, (3, 3, 3), channels=256, dense=True)
        dil = TemporalModel(17, 2, 17, (3, 3, 3), channels=256)
    assert _n_params(dense) == 1_876_787  # doc: 1.88 M
    assert _n_params(dil) == 566_067  # doc: 0.57 M
    assert [c.kernel_size[0] for c in dense.layers_conv] == [7, 1, 19, 1]
    assert [c.dilation[0] for c in dense.layers_conv] == [1, 1, 1, 1]
    assert [c.dilation[0] for c in dil.layers_conv] == [3, 1, 9, 1]
    assert dense.receptive_field() == dil.receptive_field() == 27


def test_state_dict_key_order_is_reference_order():
    keys = list(TemporalModel(17, 2, 17, (3, 3, 3), channels=8).state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = [f"expand_bn.{s}" for s in bn] + ["shrink.weight", "shrink.bias",
                                                   "expand_conv.weight"]
    expected += [f"layers_conv.{i}.weight" for i in range(4)]
    expected += [f"layers_bn.{i}.{s}" for i in range(4) for s in bn]
    assert keys == expected
    assert list(TemporalModelOptimized1f(17, 2, 17, (3, 3, 3), channels=8).state_dict()) == expected


@pytest.mark.parametrize("widths,rf,pads", [
    ((3, 3, 3), 27, [1, 3, 9]),
    ((3, 3, 3, 3), 81, [1, 3, 9, 27]),
    ((3, 3, 3, 3, 3), 243, [1, 3, 9, 27, 81]),
    ((3, 3, 7), 63, [1, 3, 27]),
    ((5, 3), 15, [2, 5]),
    ((1,), 1, [0]),
])
def test_receptive_fields_and_pads(widths, rf, pads):
    assert receptive_field_of(widths) == rf == math.prod(widths)
    assert level_pads(widths) == pads
    m = TemporalModel(2, 2, 2, widths, channels=4)
    assert m.receptive_field() == rf and m.pad == pads
    x = torch.randn(1, rf + 5, 2, 2)
    assert m.eval()(x).shape == (1, 6, 2, 3)
    assert level_dilations((3, 3, 7)) == [1, 3, 9]


@pytest.mark.parametrize("bad,idx", [((3, 4, 3), 1), ((2,), 0), ((3, 3, 3, 8), 3)])
def test_even_width_is_refused_naming_it(bad, idx):
    with pytest.raises(ValueError, match=rf"filter_widths\[{idx}\] = {bad[idx]} is even"):
        TemporalModel(17, 2, 17, bad)
    with pytest.raises(ValueError, match=rf"filter_widths\[{idx}\]"):
        TemporalModelOptimized1f(17, 2, 17, bad)


def test_empty_and_nonpositive_widths_refused():
    with pytest.raises(ValueError, match="empty"):
        TemporalModel(17, 2, 17, ())
    with pytest.raises(ValueError, match=r"filter_widths\[1\] = -3"):
        TemporalModel(17, 2, 17, (3, -3))


def test_total_causal_shift_is_half_rf_not_reference_bug():
    causal = TemporalModel(17, 2, 17, (3, 3, 3), causal=True, channels=4)
    assert causal.causal_shift == [1, 3, 9]  # dilated per-level shifts
    assert causal.total_causal_shift() == 13  # the reference method returns 91
    fast = TemporalModelOptimized1f(17, 2, 17, (3, 3, 3), causal=True, channels=4)
    assert fast.causal_shift == [1, 1, 1] and fast.total_causal_shift() == 13
    assert TemporalModel(17, 2, 17, (3, 3, 3, 3, 3), causal=True, channels=4).total_causal_shift() == 121
    assert TemporalModel(17, 2, 17, (3, 3, 3), channels=4).total_causal_shift() == 0


@pytest.mark.parametrize("widths", [(3, 3, 3), (5, 3), (3, 3, 7), (3, 3, 3, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_strided_model_matches_full_model_on_sliding_windows(widths, causal):
    torch.manual_seed(1)
    full = TemporalModel(3, 2, 4, widths, causal=causal, channels=16)
    _randomize_bn(full)
    fast = TemporalModelOptimized1f(3, 2, 4, widths, causal=causal, channels=16)
    fast.load_state_dict(full.state_dict(), strict=True)
    full.eval(), fast.eval()
    rf = full.receptive_field()
    x = torch.randn(2, rf + 6, 3, 2)
    with torch.no_grad():
        y = full(x)
        assert y.shape == (2, 7, 4, 3)
        windows = torch.cat([fast(x[:, t:t + rf]) for t in range(7)], dim=1)
    torch.testing.assert_close(windows, y, atol=1e-5, rtol=1e-5)
    # and the other direction: the 1f weights loaded into a full model
    full2 = TemporalModel(3, 2, 4, widths, causal=causal, channels=16)
    full2.load_state_dict(fast.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(full2.eval()(x), y, atol=1e-6, rtol=1e-6)


def _copy_model(widths, causal, tap):
    """Weights that make the network copy one input frame: exposes residual alignment.

    expand_conv copies channel c at kernel tap ``tap``, every block conv is 0 (so a
    block returns its residual slice), BN is (almost) identity and shrink copies
    channel c. J_in * F = 3 * 2 = 6 = J_out * 3 also checks both channel orders.
    """
    m = TemporalModel(3, 2, 2, widths, causal=causal, channels=6, dropout=0.0)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for bn in [m.expand_bn, *m.layers_bn]:
            bn.weight.fill_(1.0)
        for c in range(6):
            m.expand_conv.weight[c, c, tap] = 1.0
            m.shrink.weight[c, c, 0] = 1.0
    return m.eval()


@pytest.mark.parametrize("widths", [(3, 3, 3), (3, 5), (5, 3, 3)])
def test_residual_alignment_centre_vs_last_frame(widths):
    rf = receptive_field_of(widths)
    x = torch.rand(2, rf + 4, 3, 2) + 0.1  # positive: ReLU passes it through
    scale = 1.0 / math.sqrt(1.0 + 1e-5)  # BN eval with var 1
    flat = x.reshape(2, rf + 4, 6)
    with torch.no_grad():
        centre = _copy_model(widths, False, widths[0] // 2)(x).reshape(2, 5, 6)
        last = _copy_model(widths, True, widths[0] - 1)(x).reshape(2, 5, 6)
    # non-causal: output t is centred on input t + (RF-1)/2; causal: on t + RF - 1
    half = (rf - 1) // 2
    torch.testing.assert_close(centre, flat[:, half:half + 5] * scale**len(widths))
    torch.testing.assert_close(last, flat[:, rf - 1:rf + 4] * scale**len(widths))


def test_causal_output_depends_only_on_past_frames():
    torch.manual_seed(2)
    m = TemporalModel(4, 2, 4, (3, 3, 3), causal=True, channels=16)
    _randomize_bn(m)
    m.eval()
    rf, t_len, t0 = 27, 40, 20
    x = torch.randn(1, t_len, 4, 2)
    # the data pipeline pads RF-1 frames on the left (edge) and none on the right
    padded = torch.cat([x[:, :1].expand(1, rf - 1, 4, 2), x], dim=1)
    x2 = x.clone()
    x2[:, t0 + 1:] += torch.randn_like(x2[:, t0 + 1:])
    padded2 = torch.cat([x2[:, :1].expand(1, rf - 1, 4, 2), x2], dim=1)
    with torch.no_grad():
        y, y2 = m(padded), m(padded2)
    assert y.shape[1] == t_len
    torch.testing.assert_close(y[:, :t0 + 1], y2[:, :t0 + 1], atol=0, rtol=0)
    assert (y[:, t0 + 1] - y2[:, t0 + 1]).abs().max() > 1e-4


def test_dense_equals_dilated_with_zero_filled_kernels():
    torch.manual_seed(3)
    dil = TemporalModel(3, 2, 3, (3, 3, 3), channels=8)
    _randomize_bn(dil)
    dense = TemporalModel(3, 2, 3, (3, 3, 3), channels=8, dense=True)
    sd = dil.state_dict()
    for i, d in ((0, 3), (2, 9)):  # dilated conv taps 0, d, 2d inside a 2d+1 kernel
        w = sd[f"layers_conv.{i}.weight"]
        wide = torch.zeros(w.shape[0], w.shape[1], 2 * d + 1)
        wide[:, :, ::d] = w
        sd[f"layers_conv.{i}.weight"] = wide
    dense.load_state_dict(sd, strict=True)
    x = torch.randn(2, 33, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(dense.eval()(x), dil.eval()(x), atol=1e-5, rtol=1e-5)


def test_trajectory_model_and_input_checks():
    traj = TemporalModel(17, 2, 1, (3, 3), channels=8).eval()
    assert traj(torch.randn(3, 12, 17, 2)).shape == (3, 4, 1, 3)
    with pytest.raises(ValueError, match=r"expects input \(B, T, 17, 2\)"):
        traj(torch.randn(3, 12, 16, 2))
    with pytest.raises(ValueError, match="T >= receptive field 9"):
        traj(torch.randn(3, 8, 17, 2))
    fast = TemporalModelOptimized1f(17, 2, 1, (3, 3), channels=8).eval()
    assert fast(torch.randn(3, 9, 17, 2)).shape == (3, 1, 1, 3)
    with pytest.raises(ValueError, match="exactly T = receptive field 9"):
        fast(torch.randn(3, 10, 17, 2))


def test_in_features_three_with_scores():
    m = TemporalModel(17, 3, 17, (3, 3), channels=8).eval()
    assert m.expand_conv.weight.shape == (8, 51, 3)
    assert m(torch.randn(1, 9, 17, 3)).shape == (1, 1, 17, 3)


def test_bn_momentum_helpers():
    m = TemporalModel(2, 2, 2, (3, 3, 3), channels=4)
    assert all(bn.momentum == 0.1 for bn in [m.expand_bn, *m.layers_bn])
    m.set_bn_momentum(0.02)
    assert all(bn.momentum == 0.02 for bn in [m.expand_bn, *m.layers_bn])
    assert bn_momentum_schedule(0, 80) == pytest.approx(0.1)
    assert bn_momentum_schedule(80, 80) == pytest.approx(0.001)
    assert bn_momentum_schedule(40, 80) == pytest.approx(0.01)
    # last epoch trains with the momentum set after epoch E-1: 0.001 * 100**(1/E)
    assert bn_momentum_schedule(79, 80) == pytest.approx(0.001 * 100 ** (1 / 80))


def test_constructor_args_and_receptive_fields():
    m = TemporalModel(num_joints_in=17, in_features=2, num_joints_out=17,
                      filter_widths=(3, 3, 3, 3, 3), channels=4)
    assert m.receptive_field() == 243
    assert TemporalModel(num_joints_in=17, in_features=2, num_joints_out=17,
                         filter_widths=(3, 3, 3, 3), channels=4).receptive_field() == 81
    assert TemporalModelOptimized1f(17, 2, 17, (3, 3), channels=4).receptive_field() == 9
    args = TemporalModel(17, 2, 1, (3, 3, 7), causal=True, channels=4, dense=True
                         ).constructor_args()
    rebuilt = TemporalModel(**args)
    assert args["filter_widths"] == [3, 3, 7] and args["causal"] and args["dense"]
    assert rebuilt.receptive_field() == 63 and rebuilt.num_joints_out == 1


def test_training_mode_backward_runs_through_inplace_relu():
    m = TemporalModel(3, 2, 3, (3, 3), channels=8, dropout=0.25).train()
    y = m(torch.randn(4, 9, 3, 2))
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_matches_cpu():
    torch.manual_seed(4)
    m = TemporalModel(17, 2, 17, (3, 3, 3), channels=64)
    _randomize_bn(m)
    m.eval()
    x = torch.randn(2, 40, 17, 2)
    with torch.no_grad():
        ref = m(x)
        gm = m.cuda()
        with torch.autocast("cuda", dtype=torch.float16):
            out = gm(x.cuda(non_blocking=True)).float().cpu()
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
