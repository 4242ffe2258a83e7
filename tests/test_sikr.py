"""SIKR integral regression: decode semantics, symmetric backward, L1 loss, flip test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from poselift.extract.estimators.sikr import (
    AMPLITUDE, FLIP_PAIRS, HALPE136_FLIP_PAIRS, SymmetricIntegral, flip_heatmap_back, flip_pairs_for,
    flip_test_logits, sikr_decode, sikr_integral, sikr_l1_loss, sikr_targets,
)

H, W = 64, 48
UNIT_BOX = np.array([[0.0, 0.0, W, H]])  # crop box whose pixels equal heatmap cells

torch.set_num_threads(2)


def _peak(n: int, k: int, cells: list[tuple[int, int]], hi: float = 30.0, lo: float = -30.0) -> torch.Tensor:
    x = torch.full((n, k, H, W), lo)
    for j, (cx, cy) in enumerate(cells):
        x[:, j, cy, cx] = hi
    return x


def test_delta_peak_decodes_to_its_cell_centre_index() -> None:
    cells = [(0, 0), (47, 63), (10, 20), (31, 5)]
    x = _peak(1, 4, cells)
    norm, conf = sikr_integral(x)
    expect = torch.tensor([[cx / W - 0.5, cy / H - 0.5] for cx, cy in cells])
    assert torch.allclose(norm[0], expect, atol=1e-6)
    assert torch.allclose(conf, torch.ones(1, 4, 1))
    coords, scores = sikr_decode(x, UNIT_BOX)
    assert coords.dtype == np.float32 and coords.shape == (1, 4, 2) and scores.shape == (1, 4, 1)
    assert np.allclose(coords[0], np.array(cells, dtype=np.float32), atol=1e-4)  # no +0.5


def test_background_mass_pulls_to_centre_and_flat_map_scores_half() -> None:
    coords, scores = sikr_decode(torch.zeros(1, 1, H, W), UNIT_BOX)
    assert np.allclose(coords[0, 0], [(W - 1) / 2, (H - 1) / 2], atol=1e-4)
    assert np.allclose(scores, 0.5)
    # A moderate peak is biased toward the centre by the background mass: sigmoid(0) = 0.5 per cell.
    x = _peak(1, 1, [(5, 5)], hi=8.0, lo=0.0)
    p = torch.sigmoid(torch.tensor(8.0)).item()
    total = p + 0.5 * (H * W - 1)
    ex = (5 * p + 0.5 * (sum(range(W)) * H - 5)) / total
    norm, _ = sikr_integral(x)
    assert np.isclose(norm[0, 0, 0].item(), ex / W - 0.5, atol=1e-6)


def test_box_mapping_isotropic_about_centre() -> None:
    x = _peak(1, 1, [(12, 40)])
    box = np.array([[100.0, 50.0, 196.0, 178.0]])  # 96 x 128 = 2 x heatmap
    coords, _ = sikr_decode(x, box)
    assert np.allclose(coords[0, 0], [148.0 + (12 - 24) * 2.0, 114.0 + (40 - 32) * 2.0], atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_translating_box_translates_keypoints_and_coords_stay_in_map(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 17, H, W, generator=g) * 4
    rng = np.random.default_rng(seed)
    boxes = np.c_[rng.uniform(0, 500, (3, 2)), np.zeros((3, 2))]
    boxes[:, 2:] = boxes[:, :2] + np.array([[96.0, 128.0]]) * rng.uniform(0.5, 3, (3, 1))
    shift = rng.uniform(-200, 200, 2)
    c0, s0 = sikr_decode(x, boxes)
    c1, s1 = sikr_decode(x, boxes + np.r_[shift, shift])
    assert np.allclose(c1 - c0, shift, atol=1e-3) and np.array_equal(s0, s1)
    cells, _ = sikr_decode(x, np.tile(UNIT_BOX, (3, 1)))
    assert (cells[..., 0] >= 0).all() and (cells[..., 0] <= W - 1).all()
    assert (cells[..., 1] >= 0).all() and (cells[..., 1] <= H - 1).all()


def test_confidence_is_max_sigmoid_and_monotonic_in_peak_height() -> None:
    heights = torch.linspace(-3, 6, 10)
    x = torch.randn(1, 1, H, W) - 4
    maps = x.repeat(10, 1, 1, 1)
    maps[:, 0, 30, 20] = heights
    _, scores = sikr_decode(maps, np.tile(UNIT_BOX, (10, 1)))
    s = scores[:, 0, 0]
    assert (np.diff(s) >= 0).all() and s[-1] > s[0]
    assert np.allclose(s, torch.sigmoid(maps.flatten(1).max(1).values).numpy(), atol=1e-7)


def test_symmetric_backward_is_plus_minus_amplitude() -> None:
    torch.manual_seed(0)
    m = torch.softmax(torch.randn(2, 3, W), dim=-1).requires_grad_(True)
    out = SymmetricIntegral.apply(m, AMPLITUDE)
    plain = m * torch.arange(W, dtype=m.dtype)
    assert torch.equal(out, plain)  # forward identical
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, m, g)
    (grad_plain,) = torch.autograd.grad(plain, m, g)
    c = plain.detach().sum(-1, keepdim=True)
    sign = torch.where(torch.arange(W) < c, -1.0, 1.0)
    assert torch.allclose(grad, g * AMPLITUDE * sign)
    assert not torch.allclose(grad, grad_plain)
    # Coordinate beyond the axis length: +A everywhere.
    big = torch.full((1, 1, W), 1.0, requires_grad=True)  # c = sum(i) > W
    (gb,) = torch.autograd.grad(SymmetricIntegral.apply(big, 2.0).sum(), big)
    assert torch.equal(gb, torch.full_like(gb, 2.0))


def test_l1_loss_value_and_gradients() -> None:
    cells = [(10, 20), (30, 40)]
    x = _peak(2, 2, cells)
    joints = np.array([[[10 * 4, 20 * 4], [30 * 4 + 8, 40 * 4]]] * 2, dtype=np.float32)
    vis = np.array([[1, 1], [1, 0]], dtype=np.float32)
    tgt, w = sikr_targets(joints, vis, crop_size=(256, 192))
    assert tgt.shape == (2, 4) and np.allclose(tgt[0], [40 / 192 - .5, 80 / 256 - .5, 128 / 192 - .5, 160 / 256 - .5])
    loss = sikr_l1_loss(x, torch.from_numpy(tgt), torch.from_numpy(w))
    # pred x for joint 1 is 30/48 - 0.5; gt is 128/192 - 0.5; only sample 0 sees joint 1.
    expected = abs(30 / 48 - 128 / 192) / 2
    assert np.isclose(loss.item(), expected, atol=1e-6)
    # Gradient: symmetric surrogate differs from plain autograd; same forward value.
    y = (torch.randn(2, 2, H, W) * 2).requires_grad_(True)
    a = sikr_l1_loss(y, torch.from_numpy(tgt), torch.from_numpy(w))
    (ga,) = torch.autograd.grad(a, y)
    b = sikr_l1_loss(y, torch.from_numpy(tgt), torch.from_numpy(w), symmetric_grad=False)
    (gb,) = torch.autograd.grad(b, y)
    assert torch.equal(a, b) and not torch.allclose(ga, gb)
    assert torch.count_nonzero(ga[1, 1]) == 0  # invisible joint gets no gradient
    with pytest.raises(ValueError, match="must not require gradients"):
        sikr_l1_loss(y, torch.zeros(2, 4, requires_grad=True), torch.ones(2, 4))


def test_body_joints_weighted_twice_for_fullbody_sets() -> None:
    for k, body in ((136, 26), (133, 23), (68, 26)):
        _, w = sikr_targets(np.zeros((1, k, 2)), np.ones((1, k)))
        w = w.reshape(k, 2)
        assert (w[:body] == 2).all() and (w[body:] == 1).all()
    _, w = sikr_targets(np.zeros((1, 26, 2)), np.ones((1, 26)))
    assert (w == 1).all()


def test_flip_pairs_tables() -> None:
    assert len(flip_pairs_for(17)) == 8 and len(flip_pairs_for(26)) == 11 and len(flip_pairs_for(136)) == 61
    flat = [j for p in HALPE136_FLIP_PAIRS for j in p]
    assert len(set(flat)) == len(flat) and max(flat) == 135
    assert set(FLIP_PAIRS["halpe26"]) == set(HALPE136_FLIP_PAIRS[:11])
    with pytest.raises(ValueError, match="133"):
        flip_pairs_for(133)


def test_flip_back_is_mirror_swap_and_cloned_shift() -> None:
    torch.manual_seed(1)
    maps = torch.randn(2, 17, 6, 8)
    pairs = flip_pairs_for(17)
    perm = list(range(17))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    out = flip_heatmap_back(maps, pairs)
    wd = maps.shape[-1]
    for c in range(17):
        for j in range(wd):
            src = wd - j if j >= 1 else wd - 1
            assert torch.equal(out[:, c, :, j], maps[:, perm[c], :, src])
    assert torch.equal(flip_heatmap_back(maps, pairs, shift=False).flip(-1)[:, perm], maps)


class _MirrorEquivariant(nn.Module):
    """Stub head: K identical channels = 4x4-average-pooled red channel (mirror-equivariant)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x[:, :1], 4).repeat(1, self.k, 1, 1)


def test_flip_test_on_symmetric_input() -> None:
    torch.manual_seed(2)
    half = torch.randn(1, 3, 256, 96)
    crop = torch.cat((half, half.flip(-1)), dim=-1)  # mirror-symmetric image
    model = _MirrorEquivariant(17)
    got = flip_test_logits(model, crop, flip_pairs_for(17))
    m = model(crop)
    # Pooling the mirrored crop sums in another order: equal up to float rounding.
    assert torch.allclose(got, (m + torch.cat((m[..., :1], m[..., :-1]), -1)) / 2, atol=1e-6)
    # Decoding the averaged map of a symmetric crop stays within half a cell of the centre line.
    coords, _ = sikr_decode(got * 10, UNIT_BOX)
    assert np.all(np.abs(coords[0, :, 0] - (W - 1) / 2) <= 0.5 + 1e-4)


def test_decode_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"boxes"):
        sikr_decode(torch.zeros(2, 17, H, W), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\(N, K, H, W\)"):
        sikr_integral(torch.zeros(17, H, W))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flip_test_amp_on_cuda_matches_fp32() -> None:
    from poselift.extract.estimators.fastpose import FastPose
    torch.manual_seed(0)
    model = FastPose(17, stem=16, widths=(64, 128, 256, 512), duc1_out=256, duc2_out=128).cuda().eval()
    crops = torch.randn(4, 3, 256, 192, device="cuda")
    ref = flip_test_logits(model, crops, flip_pairs_for(17), amp=False)
    fast = flip_test_logits(model, crops, flip_pairs_for(17), amp=True)
    c_ref, _ = sikr_decode(ref, np.tile(UNIT_BOX, (4, 1)))
    c_amp, _ = sikr_decode(fast, np.tile(UNIT_BOX, (4, 1)))
    assert np.abs(c_ref - c_amp).max() < 0.05
