"""Lifter losses: hand-computed values and properties."""

from __future__ import annotations

import pytest
import torch

from poselift.datasets.joints import H36M17
from poselift.lifting.videopose3d.losses import (
    bone_length_loss,
    depth_weights,
    mean_velocity_error,
    mpjpe_loss,
    n_mpjpe_loss,
    projection_loss,
    weighted_mpjpe_loss,
)

D = torch.float64


def test_mpjpe_hand_value():
    pred = torch.zeros(1, 1, 2, 3, dtype=D)
    target = torch.tensor([[[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]]], dtype=D)
    assert mpjpe_loss(pred, target).item() == pytest.approx(2.5)  # (5 + 0) / 2
    # frames and batch are averaged too: a second frame with error 12 (3,4,12 -> 13)
    pred2 = torch.zeros(2, 1, 1, 3, dtype=D)
    target2 = torch.tensor([[[[3.0, 4.0, 0.0]]], [[[3.0, 4.0, 12.0]]]], dtype=D)
    assert mpjpe_loss(pred2, target2).item() == pytest.approx(9.0)


def test_weighted_mpjpe_depth_weights():
    # two samples (B=2, T=1, J=1): errors 5 and 1, root depths 0.5 and 2 -> w = 2, 0.5
    pred = torch.tensor([[[[3.0, 4.0, 0.5]]], [[[0.0, 1.0, 2.0]]]], dtype=D)
    target = torch.tensor([[[[0.0, 0.0, 0.5]]], [[[0.0, 0.0, 2.0]]]], dtype=D)
    w = depth_weights(target)
    assert w.shape == (2, 1, 1)
    torch.testing.assert_close(w.flatten(), torch.tensor([2.0, 0.5], dtype=D))
    assert weighted_mpjpe_loss(pred, target, w).item() == pytest.approx((2 * 5 + 0.5 * 1) / 2)
    # unit weights reduce to mpjpe
    ones = torch.ones(2, 1, 1, dtype=D)
    assert weighted_mpjpe_loss(pred, target, ones).item() == pytest.approx(mpjpe_loss(pred, target).item())
    with pytest.raises(ValueError, match=r"w shape \(2,\) does not broadcast .*\(2, 1, 1\)"):
        weighted_mpjpe_loss(pred, target, torch.ones(2, dtype=D))


def test_n_mpjpe_hand_values_and_scale_invariance():
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=D)[None]
    target = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=D)[None]
    # s = mean(<p,t>) / mean(|p|^2) = 2 / 1; 2p = (2,0,0),(0,2,0): errors 1, 1
    assert n_mpjpe_loss(pred, target).item() == pytest.approx(1.0)
    assert n_mpjpe_loss(2.0 * target, target).item() == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 4, 17, 3, generator=g, dtype=D)
    t = torch.randn(3, 4, 17, 3, generator=g, dtype=D)
    assert n_mpjpe_loss(7.5 * p, t).item() == pytest.approx(n_mpjpe_loss(p, t).item())
    # scale is per pose (frame): scaling one frame only changes nothing either
    p2 = p.clone()
    p2[1, 2] *= 3.0
    assert n_mpjpe_loss(p2, t).item() == pytest.approx(n_mpjpe_loss(p, t).item())


def test_mean_velocity_error_hand_value_and_sequence_boundaries():
    # x positions 0, 1, 3 vs 0, 1, 2: velocity differences 0 and 1 -> 0.5
    pred = torch.zeros(3, 1, 3, dtype=D)  # (T, J, 3)
    target = torch.zeros(3, 1, 3, dtype=D)
    pred[:, 0, 0] = torch.tensor([0.0, 1.0, 3.0])
    target[:, 0, 0] = torch.tensor([0.0, 1.0, 2.0])
    assert mean_velocity_error(pred, target).item() == pytest.approx(0.5)
    # (B, T, J, 3): two sequences of constant but different offsets -> zero error,
    # which a difference across the batch boundary would not give
    a = torch.zeros(2, 4, 2, 3, dtype=D)
    a[1] += 10.0
    assert mean_velocity_error(a, torch.zeros_like(a)).item() == 0.0
    with pytest.raises(ValueError, match=">= 2 frames"):
        mean_velocity_error(torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 2, 3))


def test_bone_length_loss_hand_value():
    parents = [-1, 0, 1]  # chain: bones 1-0 and 2-1
    lab = torch.zeros(2, 1, 3, 3, dtype=D)
    lab[0, 0, 1] = torch.tensor([1.0, 0, 0])
    lab[0, 0, 2] = torch.tensor([1.0, 2.0, 0])  # lengths 1, 2
    lab[1, 0, 1] = torch.tensor([0, 3.0, 0])
    lab[1, 0, 2] = torch.tensor([0, 3.0, 2.0])  # lengths 3, 2 -> means (2, 2)
    unlab = torch.zeros(3, 1, 3, 3, dtype=D)
    unlab[:, 0, 1, 0] = 1.0
    unlab[:, 0, 2, 0] = 2.0  # lengths 1, 1 for all three
    assert bone_length_loss(lab, unlab, parents).item() == pytest.approx(1.0)  # (|2-1| + |2-1|) / 2


def test_bone_length_loss_matches_reference_split_formula():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(6, 5, 17, 3, generator=g, dtype=D)
    split = 4
    parents = list(H36M17.parents)
    # the reference: dists over joints 1.. to their parents, norm, mean over batch, then frames
    dists = pred[:, :, 1:] - pred[:, :, parents[1:]]
    lab = torch.linalg.vector_norm(dists[:split], dim=3).mean(dim=0).mean(dim=0)
    unlab = torch.linalg.vector_norm(dists[split:], dim=3).mean(dim=0).mean(dim=0)
    ref = (lab - unlab).abs().mean()
    torch.testing.assert_close(bone_length_loss(pred[:split], pred[split:], parents), ref)
    # translation does not change bone lengths; identical sets give 0
    shifted = pred[split:] + torch.tensor([1.0, -2.0, 3.0], dtype=D)
    torch.testing.assert_close(bone_length_loss(pred[split:], shifted, parents),
                               torch.zeros((), dtype=D), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 17, 3\)"):
        bone_length_loss(pred[:, :, :16], pred[:, :, :16], parents)


def test_projection_loss_hand_value():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]], dtype=D)
    target = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]], dtype=D)
    assert projection_loss(pred, target).item() == pytest.approx(2.5)


def test_shape_mismatch_is_named():
    with pytest.raises(
            ValueError,
            match=r"mpjpe_loss\(pred, target\): shapes differ, \(2, 17, 3\) vs \(2, 16, 3\)"):
        mpjpe_loss(torch.zeros(2, 17, 3), torch.zeros(2, 16, 3))
    with pytest.raises(ValueError, match="projection_loss"):
        projection_loss(torch.zeros(2, 17, 2), torch.zeros(2, 17, 3))


def test_losses_are_differentiable():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(2, 3, 17, 3, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 17, 3, generator=g)
    total = (mpjpe_loss(p, t) + n_mpjpe_loss(p, t) + mean_velocity_error(p, t)
             + bone_length_loss(p[:1], p[1:], H36M17.parents)
             + projection_loss(p[..., :2], t[..., :2])
             + weighted_mpjpe_loss(p[:, :, :1], t[:, :, :1], torch.ones(2, 3, 1)))
    total.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
