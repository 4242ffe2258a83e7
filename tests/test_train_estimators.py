"""Estimator training steps on synthetic stick-figure crops: augmentation consistency, falling
losses, gradients through DCN offsets / masks / GTM, frozen FAMI backbone."""
from __future__ import annotations

import numpy as np
import torch

from poselift.datasets.joints import COCO17
from poselift.extract.estimators.famipose import FAMIPose, FamiConfig
from poselift.extract.estimators.fastpose import FastPose
from poselift.extract.estimators.hrnet import HRNet
from poselift.extract.training.steps import (augment, fami_optimizer, fami_train_step, gaussian_heatmaps,
                                               render_figure, sikr_optimizer, sikr_train_step,
                                               synthetic_fami_batch, synthetic_sikr_batch)


def test_augment_moves_image_and_joints_together() -> None:
    rng = np.random.default_rng(0)
    img, j = render_figure(rng, (64, 48))
    perm = COCO17.flip_permutation()
    # flip only: the joint dot colours must be found at the flipped (and swapped) positions
    out, j2, vis = augment(img, j, np.random.default_rng(1), perm, flip_p=1.0, rot_p=0.0, scale_std=0.0)
    assert vis.all()
    np.testing.assert_allclose(j2[perm][:, 0], 47 - j[:, 0], atol=1e-5)
    for k in range(17):
        x, y = np.round(j[k]).astype(int)
        x2, y2 = np.round(j2[perm[k]]).astype(int)
        assert (out[y2, x2] == img[y, x]).all()
    # rotation + scale: the same matrix for the image and the joints
    img, j = render_figure(rng, (128, 96))  # dots of radius 3 survive bilinear resampling
    out, j3, vis = augment(img, j, np.random.default_rng(5), perm, flip_p=0.0, rot_p=1.0)
    assert vis.sum() >= 10
    close = []
    for k in np.flatnonzero(vis):
        x, y = np.round(j[k]).astype(int)
        x3, y3 = np.round(j3[k]).astype(int)
        close.append(np.abs(out[y3, x3].astype(int) - img[y, x].astype(int)).max() <= 40)
    assert np.mean(close) >= 0.8


def test_gaussian_heatmap_peak_at_joint_over_stride() -> None:
    hm, w = gaussian_heatmaps(np.array([[[20.0, 12.0]]]), np.array([[True]]), (64, 48), stride=4, sigma=2)
    assert hm.shape == (1, 1, 16, 12) and np.unravel_index(hm[0, 0].argmax(), (16, 12)) == (3, 5)
    assert np.isclose(hm.max(), 1.0) and w.tolist() == [[1.0]]


def test_sikr_finetuning_loss_falls() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = FastPose(17, stem=8, widths=(16, 32, 64, 128), layers=(1, 1, 1, 1), duc1_out=64, duc2_out=32)
    opt = sikr_optimizer(m)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3
    losses = [sikr_train_step(m, opt, *synthetic_sikr_batch(rng, 8, (64, 48))) for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


def test_fami_head_training_frozen_backbone_and_gradients() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = FAMIPose(HRNet(width=12, num_joints=17), 17, FamiConfig(feature_size=(16, 16)))
    before = {k: v.clone() for k, v in m.hrnet.state_dict().items()}
    opt = fami_optimizer(m)
    batch = synthetic_fami_batch(rng, 4, (64, 64))
    torch.set_flush_denormal(True)  # random HRNet -> subnormals, 10x slower on CPU otherwise
    try:
        parts = [fami_train_step(m, opt, *batch) for _ in range(25)]
    finally:
        torch.set_flush_denormal(False)
    assert parts[-1]["mse"] < 0.8 * parts[0]["mse"] and np.isfinite(parts[-1]["mi"])
    for name in ("dcn_offset_1.conv.weight", "dcn_mask_3.conv.weight", "dcn_2.weight",
                 "feat_global_offset_layers.9.weight", "feat_global_offset_layers.0.layers.0.conv1.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    assert all(p.grad is None for p in m.hrnet.parameters())
    for k, v in m.hrnet.state_dict().items():  # frozen weights and BN statistics
        assert torch.equal(v, before[k]), k
