"""Metric maths against hand-computed values and reference semantics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from poselift.evaluation import metrics as M


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix (3, 3) for a unit axis."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _pose(t: int = 4, j: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(t, j, 3))


def _reference_pa(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Independent transcription of the documented per-frame Procrustes (row vectors)."""
    out = []
    for p, g in zip(pred, gt):
        pc, gc = p - p.mean(0), g - g.mean(0)
        u, s, vt = np.linalg.svd(pc.T @ gc)
        d = np.sign(np.linalg.det(u @ vt))
        r = u @ np.diag([1, 1, d]) @ vt
        scale = (s * np.array([1, 1, d])).sum() / (pc ** 2).sum()
        out.append(np.linalg.norm(scale * pc @ r + g.mean(0) - g, axis=1).mean())
    return np.array(out)


def test_mpjpe_hand_values_and_masks() -> None:
    gt = np.zeros((2, 2, 3))
    pred = np.zeros((2, 2, 3))
    pred[0, 0] = [3, 4, 0]        # distance 5
    pred[1, 1] = [0, 0, 2]        # distance 2
    np.testing.assert_allclose(M.mpjpe(pred, gt), [2.5, 1.0])
    out = M.mpjpe(pred, gt, mask=np.array([True, False]))
    assert out.shape == (2,) and out[0] == 2.5 and np.isnan(out[1])
    jm = np.array([[True, False], [False, True]])
    np.testing.assert_allclose(M.mpjpe(pred, gt, mask=jm), [5.0, 2.0])
    np.testing.assert_allclose(M.evaluated(out), [2.5])


def test_similarity_transform_gives_zero_p_mpjpe() -> None:
    gt = _pose()
    r = _rot(np.array([1.0, 2.0, 0.5]), 0.9)
    pred = 2.5 * gt @ r.T + np.array([0.3, -1.0, 2.0])
    assert M.mpjpe(pred, gt).min() > 0.5
    np.testing.assert_allclose(M.p_mpjpe(pred, gt), 0.0, atol=1e-10)
    np.testing.assert_allclose(M.procrustes_align(pred, gt), gt, atol=1e-10)


def test_reflection_is_not_undone() -> None:
    gt = _pose(t=3, j=8, seed=1)
    pred = gt * np.array([-1.0, 1.0, 1.0])       # mirror image: improper transform
    err = M.p_mpjpe(pred, gt)
    assert (err > 0.1).all()
    aligned = M.procrustes_align(pred, gt)
    for p, a in zip(pred, aligned):
        lin = np.linalg.lstsq(p - p.mean(0), a - a.mean(0), rcond=None)[0]
        # the fitted map is scale * rotation with det +1: a composition with the
        # mirror keeps a negative determinant, i.e. the reflection stays in the error
        assert np.linalg.det(lin) > 0
    np.testing.assert_allclose(err, _reference_pa(pred, gt), rtol=1e-10)


def test_procrustes_matches_reference_formula_random() -> None:
    pred, gt = _pose(20, 17, 2), _pose(20, 17, 3)
    np.testing.assert_allclose(M.p_mpjpe(pred, gt), _reference_pa(pred, gt), rtol=1e-10)
    # dtype and torch CPU tensors give the same numbers
    np.testing.assert_allclose(M.p_mpjpe(pred.astype(np.float32), gt.astype(np.float32)),
                               _reference_pa(pred, gt), rtol=1e-5)
    np.testing.assert_allclose(M.mpjpe(torch.from_numpy(pred), torch.from_numpy(gt)),
                               M.mpjpe(pred, gt))


def test_masked_procrustes_fits_visible_joints_only() -> None:
    gt = _pose(3, 7, 4)
    pred = 0.5 * gt @ _rot(np.array([0.0, 1.0, 1.0]), 1.2).T + 4.0
    pred[:, 6] += 10.0                                  # garbage joint
    jm = np.ones((3, 7), dtype=bool)
    jm[:, 6] = False
    np.testing.assert_allclose(M.p_mpjpe(pred, gt, jm), 0.0, atol=1e-10)
    assert (M.p_mpjpe(pred, gt) > 0.5).all()
    # fully masked frame: NaN, not a crash
    fm = np.array([True, False, True])
    out = M.p_mpjpe(pred, gt, fm)
    assert np.isnan(out[1]) and not np.isnan(out[[0, 2]]).any()


def test_degenerate_prediction_maps_to_gt_centroid() -> None:
    gt = _pose(2, 5, 5)
    pred = np.zeros_like(gt)
    aligned = M.procrustes_align(pred, gt)
    np.testing.assert_allclose(aligned, np.broadcast_to(gt.mean(1, keepdims=True), gt.shape))


def test_n_mpjpe_scale_only() -> None:
    gt = _pose(3, 5, 6)
    np.testing.assert_allclose(M.n_mpjpe(0.25 * gt, gt), 0.0, atol=1e-12)
    # translation is not removed by Protocol 3: hand-compute the scale of one frame
    pred = gt + np.array([1.0, 0.0, 0.0])
    s = (pred[0] * gt[0]).sum() / (pred[0] ** 2).sum()
    expect = np.linalg.norm(s * pred[0] - gt[0], axis=1).mean()
    assert M.n_mpjpe(pred, gt)[0] == pytest.approx(expect, rel=1e-12)
    assert M.n_mpjpe(pred, gt)[0] > 0.1


def test_mpjve_hand_values_no_dt() -> None:
    gt = np.zeros((4, 1, 3))
    pred = np.zeros((4, 1, 3))
    pred[2, 0, 0] = 3.0                # velocity errors: 0, 3, 3 (never divided by fps)
    np.testing.assert_allclose(M.mpjve(pred, gt), [0.0, 3.0, 3.0])
    np.testing.assert_allclose(M.mpjve(gt + 7.0, gt), 0.0)        # constant offset
    out = M.mpjve(pred, gt, mask=np.array([True, True, False, True]))
    assert out[0] == 0.0 and np.isnan(out[1:]).all()


def test_acceleration_magnitude() -> None:
    t = np.arange(6, dtype=float)
    const_vel = np.stack([t, 2 * t, -t], axis=1)[:, None, :].repeat(3, axis=1)
    np.testing.assert_allclose(M.acceleration(const_vel), np.zeros(4), atol=1e-12)
    quad = np.zeros((6, 2, 3))
    quad[:, :, 1] = (t ** 2)[:, None]          # second difference of t^2 is 2
    out = M.acceleration(quad)
    assert out.shape == (4,)
    np.testing.assert_allclose(out, 2.0)


def test_acceleration_error_vis_drops_triplets() -> None:
    t = 8
    gt = np.zeros((t, 2, 3))
    pred = np.zeros((t, 2, 3))
    pred[:, 0, 0] = np.arange(t) ** 2 * 0.5 + np.arange(t)   # accel 1 on joint 0
    pred[5, 1, 2] = 4.0                                       # spike on joint 1
    full = M.acceleration_error(pred, gt)
    # triplet i is centred on frame i+1; joint 1's spike hits centres 4, 5, 6
    np.testing.assert_allclose(full, [0.5, 0.5, 0.5, 2.5, 4.5, 2.5])
    vis = np.ones(t, dtype=bool)
    vis[3] = False                                   # kills centres 2, 3, 4
    kept_vals = M.acceleration_error(pred, gt, vis)
    np.testing.assert_allclose(kept_vals, full[[0, 4, 5]])
    vals, kept = M.acceleration_error_with_mask(pred, gt, vis)
    assert vals.shape == (t - 2,)
    np.testing.assert_array_equal(kept, [True, False, False, False, True, True])
    assert np.isnan(vals[~kept]).all()
    vis0 = np.ones(t, dtype=bool)
    vis0[0] = False                                  # only the first triplet goes
    assert len(M.acceleration_error(pred, gt, vis0)) == t - 3
    # per-joint visibility: hiding joint 1 at frame 5 keeps the triplets, joint 0 only
    jm = np.ones((t, 2), dtype=bool)
    jm[5, 1] = False
    np.testing.assert_allclose(M.acceleration_error(pred, gt, jm), [0.5, 0.5, 0.5, 1, 1, 1])
    assert len(M.acceleration_error(pred[:2], gt[:2])) == 0


def test_pve_no_alignment() -> None:
    v = np.zeros((2, 3, 3))
    w = v.copy()
    w[:, :, 0] = 1.0
    w[1, 0, 0] = 4.0
    np.testing.assert_allclose(M.pve(w, v), [1.0, 2.0])


def test_root_align_and_center_on() -> None:
    x = _pose(2, 4, 7)
    r = M.root_align(x, 2)
    np.testing.assert_allclose(r[:, 2], 0.0)
    np.testing.assert_allclose(r - r[:, :1], x - x[:, :1])
    c = M.center_on(x, [1, 3])
    np.testing.assert_allclose(c[:, [1, 3]].mean(1), 0.0, atol=1e-12)
    with pytest.raises(IndexError, match="joint index 9"):
        M.center_on(x, [0, 9])


def test_per_sequence_never_crosses_boundaries() -> None:
    a = np.zeros((5, 2, 3))
    b = np.full((4, 2, 3), 100.0)
    pa, pb = a + 1.0, b + 1.0                       # constant offsets: zero velocity error
    seq = M.per_sequence(M.mpjve, [pa, pb], [a, b])
    assert [len(s) for s in seq] == [4, 3]
    np.testing.assert_allclose(np.concatenate(seq), 0.0)
    flat_p, flat_g = np.concatenate([pa, b]), np.concatenate([a, b])
    assert M.mpjve(flat_p, flat_g).max() > 0.5     # the naive concat does cross it
    parts = M.split_sequences(flat_g, [5, 4])
    np.testing.assert_array_equal(parts[1], b)
    with pytest.raises(ValueError, match="sum to 8"):
        M.split_sequences(flat_g, [5, 3])
    masks = [np.ones(5, dtype=bool), None]
    acc = M.per_sequence(M.acceleration_error, [pa, pb], [a, b], masks)
    assert [len(s) for s in acc] == [3, 2]


def test_bad_input_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"pred shape \(2, 3, 3\) != gt shape \(2, 4, 3\)"):
        M.mpjpe(np.zeros((2, 3, 3)), np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"gt: expected shape \(T, J, 3\)"):
        M.mpjpe(np.zeros((2, 3, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mask: expected shape"):
        M.mpjpe(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), np.ones(3, dtype=bool))
    with pytest.raises(TypeError, match="mask: expected a bool"):
        M.mpjpe(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), np.ones(2))


def test_p_mpjpe_invariant_to_similarity_of_pred() -> None:
    pred, gt = _pose(6, 9, 10), _pose(6, 9, 11)
    moved = 3.0 * pred @ _rot(np.array([2.0, -1.0, 0.3]), 2.0).T - 5.0
    np.testing.assert_allclose(M.p_mpjpe(moved, gt), M.p_mpjpe(pred, gt), rtol=1e-9)
