"""SimCC head, decode, Gaussian soft labels, KLDiscretLoss and label-smoothing loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from poselift.extract.estimators.simcc import (KLDiscretLoss, LabelSmoothingLoss, SimCCHead, coords_to_bins,
                                               gaussian_soft_labels, simcc_decode)


def test_head_shapes_and_names():
    head = SimCCHead((64, 48), (192, 256), split_ratio=2.0)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {"mlp_head_x.weight": (384, 3072), "mlp_head_x.bias": (384,),
                      "mlp_head_y.weight": (512, 3072), "mlp_head_y.bias": (512,)}
    x, y = head(torch.randn(2, 17, 64, 48))
    assert x.shape == (2, 17, 384) and y.shape == (2, 17, 512)
    maps = torch.randn(1, 2, 64, 48)
    torch.testing.assert_close(head(maps)[0], maps.flatten(2) @ head.mlp_head_x.weight.T + head.mlp_head_x.bias)
    assert SimCCHead((96, 72), (288, 384), 1.5).mlp_head_y.out_features == 576
    with pytest.raises(ValueError, match="expected"):
        head(torch.randn(1, 17, 32, 48))


def test_decode_argmax_over_k_and_min_score():
    x = torch.full((1, 2, 10), -5.0)
    y = torch.full((1, 2, 8), -5.0)
    x[0, 0, 7], y[0, 0, 3] = 5.0, 2.0
    x[0, 1, 0], y[0, 1, 5] = 1.0, 4.0
    coords, score = simcc_decode(x, y, split_ratio=2.0)
    assert coords.tolist() == [[[3.5, 1.5], [0.0, 2.5]]]
    px = torch.softmax(x, -1).amax(-1)
    py = torch.softmax(y, -1).amax(-1)
    torch.testing.assert_close(score, torch.minimum(px, py))
    assert score[0, 0] == py[0, 0] and score[0, 1] == px[0, 1]


def test_gaussian_labels_formula_and_peak():
    coords = torch.tensor([[[10.0, 20.25]]])
    tx, ty = gaussian_soft_labels(coords, (64, 48), split_ratio=2.0, sigma=4.0)
    assert tx.shape == (1, 1, 128) and ty.shape == (1, 1, 96)
    assert int(tx.argmax()) == 20 and int(ty.argmax()) == 40
    want = math.exp(-((23 - 20) ** 2) / 32) / (4 * math.sqrt(2 * math.pi))
    assert float(tx[0, 0, 23]) == pytest.approx(want, rel=1e-6)
    assert coords_to_bins(coords).tolist() == [[[20, 40]]]


def _kl_reference(ox, oy, tx, ty, w):
    """Per-joint loop in the SimCC style (LogSoftmax + KLDivLoss(none), mean over bins)."""
    crit = nn.KLDivLoss(reduction="none")
    loss = 0.0
    j = ox.shape[1]
    for idx in range(j):
        for o, t in ((ox, tx), (oy, ty)):
            per = crit(F.log_softmax(o[:, idx], dim=1), t[:, idx]).mean(dim=1)
            loss = loss + (per * w[:, idx]).mean()
    return loss / j


def test_kldiscret_matches_reference_and_weights():
    g = torch.Generator().manual_seed(0)
    ox, oy = torch.randn(3, 4, 24, generator=g), torch.randn(3, 4, 32, generator=g)
    coords = torch.rand(3, 4, 2, generator=g) * torch.tensor([12.0, 16.0])
    tx, ty = gaussian_soft_labels(coords, (12, 16), 2.0, 2.0)
    w = torch.tensor([[1.0, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]])
    loss = KLDiscretLoss()(ox, oy, tx, ty, w.unsqueeze(-1))
    torch.testing.assert_close(loss, _kl_reference(ox, oy, tx, ty, w))
    # a zero-weight joint's logits do not matter
    ox2 = ox.clone()
    ox2[0, 2] += 100 * torch.randn(24, generator=g)
    torch.testing.assert_close(KLDiscretLoss()(ox2, oy, tx, ty, w), loss)
    # logits proportional to the labels beat random logits
    best = KLDiscretLoss()(tx.clamp_min(1e-12).log(), ty.clamp_min(1e-12).log(), tx, ty, w)
    assert best < loss


def test_label_smoothing_value_and_zero_smoothing_is_nll():
    logits_x = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    logits_y = torch.tensor([[[2.0, 0.0, 0.0]]])
    bins = torch.tensor([[[1, 0]]])
    s = 0.2
    loss = LabelSmoothingLoss(s)(logits_x, logits_y, bins)
    want = 0.0
    for logits, lab in ((logits_x[0, 0], 1), (logits_y[0, 0], 0)):
        m = logits.numel()
        logp = F.log_softmax(logits, dim=0)
        gt = torch.full((m,), s / (m - 1))
        gt[lab] = 1 - s
        want += float((gt * (gt.log() - logp)).mean())
    assert float(loss) == pytest.approx(want, rel=1e-6)
    nll = LabelSmoothingLoss(0.0)(logits_x, logits_y, bins)
    want_nll = F.cross_entropy(logits_x[0], torch.tensor([1])) + F.cross_entropy(logits_y[0], torch.tensor([0]))
    torch.testing.assert_close(nll, want_nll)
    with pytest.raises(ValueError, match="axis y"):
        LabelSmoothingLoss(0.1)(logits_x, logits_y, torch.tensor([[[1, 3]]]))
