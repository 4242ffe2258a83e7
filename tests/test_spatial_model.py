"""Tompson-style spatial model: identity at initialisation, shapes, gradients, frozen base, and
that it learns a pairwise offset prior."""
from __future__ import annotations

import torch
from torch import nn

from poselift.extract.estimators.spatial_model import SpatialModel, SpatialRefined


def test_identity_at_init_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    sm = SpatialModel(5, kernel=7)
    x = torch.randn(2, 5, 12, 10, requires_grad=True)
    y = sm(x)
    assert y.shape == x.shape and torch.equal(y, x)  # gain starts at 0
    assert sm.pairwise(x).shape == (2, 5, 12, 10)
    (y ** 2).sum().backward()
    assert sm.gain.grad is not None and sm.gain.grad.abs().sum() > 0
    with torch.no_grad():
        sm.gain.fill_(1.0)
    sm.zero_grad()
    sm(x).sum().backward()
    assert sm.weight.grad.abs().sum() > 0 and sm.bias.grad.abs().sum() > 0


def test_frozen_base_gets_no_gradient_and_stays_in_eval() -> None:
    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    m = SpatialRefined(base, SpatialModel(4, kernel=5), freeze_base=True).train()
    assert not base[1].training
    with torch.no_grad():
        m.spatial.gain.fill_(1.0)
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is None for p in base.parameters()) and m.spatial.weight.grad is not None
    joint = SpatialRefined(nn.Conv2d(3, 4, 3, padding=1), SpatialModel(4, kernel=5))
    with torch.no_grad():
        joint.spatial.gain.fill_(1.0)
    joint(torch.randn(2, 3, 8, 8)).sum().backward()
    assert joint.base.weight.grad.abs().sum() > 0


def test_learns_where_joint_b_sits_relative_to_joint_a() -> None:
    # Joint 0 is seen (a sharp logit peak), joint 1's own map is flat: only the pairwise
    # prior can place joint 1, which always sits at (+3, +2) cells from joint 0.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    sm = SpatialModel(2, kernel=9)
    opt = torch.optim.Adam(sm.parameters(), lr=0.05)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.randint(2, 10, (n, 2), generator=g)
        x = torch.full((n, 2, 16, 16), -6.0)
        x[torch.arange(n), 0, p[:, 1], p[:, 0]] = 6.0
        x[:, 1] = 0.0
        return x, (p[:, 1] + 2) * 16 + (p[:, 0] + 3)

    losses = []
    for _ in range(150):
        x, t = batch(16)
        loss = nn.functional.cross_entropy(sm(x)[:, 1].flatten(1), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    x, t = batch(64)
    acc = (sm(x)[:, 1].flatten(1).argmax(1) == t).float().mean()
    assert losses[0] > 5.0 and sum(losses[-10:]) / 10 < 0.3 * losses[0] and acc > 0.9
