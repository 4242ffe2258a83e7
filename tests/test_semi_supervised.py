"""Semi-supervised VideoPose3D training on H36M-format caches: the unlabeled stream, the
camera projection of imported data, the loss terms' reference semantics, the one-pass
concatenation with warm-up, and the errors for data without intrinsics."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache
from poselift.datasets.importers.videopose3d import import_videopose3d
from poselift.datasets.joints import H36M17
from poselift.lifting.config import LiftConfig
from poselift.lifting.videopose3d.semi_supervised import (SemiSupervisedError, open_unlabeled, reprojection_loss,
                                              semi_supervised_terms)
from poselift.lifting.videopose3d.model import TemporalModelOptimized1f
from poselift.lifting.videopose3d.train import train_lifter

_spec = importlib.util.spec_from_file_location("vp3d_synth", Path(__file__).with_name("vp3d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def h36m(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("h36m_semi")
    p3, p2 = synth.h36m_files(d, {s: {"Walking 1": 30, "Eating": 24} for s in ("S1", "S5", "S9")})
    rep = import_videopose3d(p3, [p2], "h36m", d / "caches")
    return {"gt": rep.gt_path, "kp": rep.keypoint_paths["gt"]}


def _stream(kp: Path, batch: int = 50, pad: int = 4, **kw):
    args = dict(downsample=1, left=pad, right=pad, chunk=1, flip=True, batch_size=batch, seed=4321)
    args.update(kw)
    return open_unlabeled(str(kp), ["S5"], None, **args)


def _cfg(h36m: dict, out: Path, **kw) -> LiftConfig:
    base = dict(gt_cache=str(h36m["gt"]), keypoints_cache=str(h36m["kp"]), train_subjects=["S1"],
                unlabeled_subjects=["S5"], test_subjects=["S9"], trajectory=True, warmup=1,
                architecture=[3, 3], channels=32, dropout=0.1, epochs=2, batch_size=64, lr=1e-2,
                eval_every=0, checkpoint_every=0, out_dir=str(out), progress=False, seed=3)
    base.update(kw)
    return LiftConfig(**base)


def test_gt_projects_onto_imported_2d_through_stream_cameras(h36m) -> None:
    """Camera-frame GT (pose + root) projected with the stream's per-window intrinsics --
    flipped windows with negated cx / p1 and mirrored 3D -- equals the unlabeled 2D target."""
    stream = _stream(h36m["kp"], batch=10_000)  # one batch = the whole pass
    batch = stream.next_batch()
    assert batch["flipped"].any() and (~batch["flipped"]).any()
    gt = Cache(h36m["gt"])
    ids = stream.dataset.ids
    pts = np.stack([gt.read(ids[s], "joints_3d")[f[0]] for s, f in
                    zip(batch["seq"].numpy(), batch["target_frames"].numpy())])[:, None]
    fl = batch["flipped"].numpy()
    perm = H36M17.flip_permutation()
    pts[fl] = pts[fl][..., perm, :] * np.array([-1, 1, 1], np.float32)
    pts = torch.from_numpy(pts)
    loss = reprojection_loss(pts - pts[..., :1, :], pts[..., :1, :], batch["kp2d_target"], batch["camera"])
    assert loss.item() < 1e-5
    # The camera vector of a flipped window is the stored one with cx and p1 negated.
    raw = np.asarray(Cache(h36m["kp"]).info(ids[int(batch["seq"][fl][0])]).attrs["camera_params"]["intrinsic"])
    cam = batch["camera"][fl][0].numpy()
    np.testing.assert_allclose(cam, raw * np.array([1, 1, -1, 1, 1, 1, 1, -1, 1]), rtol=1e-6)
    # Linear projection ignores distortion: with k, p zeroed the two agree.
    c0 = batch["camera"].clone()
    c0[:, 4:] = 0
    full = reprojection_loss(pts - pts[..., :1, :], pts[..., :1, :], batch["kp2d_target"], c0)
    lin = reprojection_loss(pts - pts[..., :1, :], pts[..., :1, :], batch["kp2d_target"], c0, linear=True)
    assert full.item() == pytest.approx(lin.item(), rel=1e-6) and lin.item() > 1e-4


def test_unlabeled_stream_is_endless_permuted_and_resumable(h36m) -> None:
    stream = _stream(h36m["kp"], batch=100)
    n = len(stream)
    assert n == 2 * 4 * (30 + 24)  # windows of S5 (4 cameras), listed twice for flipping
    seen, sizes = [], []
    while stream.pass_index == 0 or stream.position == 0:
        b = stream.next_batch()
        if stream.pass_index == 0 or stream.position == len(b["seq"]):
            sizes.append(len(b["seq"]))
        seen.append(np.stack([b["seq"].numpy(), b["target_frames"][:, 0].numpy(), b["flipped"].numpy()], 1))
        if stream.pass_index == 1:
            break
    first_pass = np.concatenate(seen[:-1])
    assert sizes[:-2] == [100] * (len(sizes) - 2) and sum(sizes[:-1]) == n  # last batch smaller
    assert len(np.unique(first_pass, axis=0)) == n  # every window exactly once per pass
    # State round trip: a fresh stream loaded with the state continues identically.
    state = stream.state_dict()
    a = stream.next_batch()
    other = _stream(h36m["kp"], batch=100)
    other.load_state_dict(state)
    b = other.next_batch()
    torch.testing.assert_close(a["kp2d"], b["kp2d"])
    torch.testing.assert_close(a["camera"], b["camera"])
    # skip() advances exactly like next_batch().
    s1, s2 = _stream(h36m["kp"], batch=37), _stream(h36m["kp"], batch=37)
    s1.skip(), s1.skip()
    s2.next_batch(), s2.next_batch()
    assert s1.state_dict() == s2.state_dict()
    torch.testing.assert_close(s1.next_batch()["kp2d"], s2.next_batch()["kp2d"])
    with pytest.raises(SemiSupervisedError, match="seed 4321, this run uses 5"):
        _stream(h36m["kp"], seed=5).load_state_dict(state)


def test_loss_terms_follow_reference_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    lab = torch.randn(5, 1, 17, 3, generator=g)
    unl = torch.randn(3, 1, 17, 3, generator=g)
    traj = torch.randn(3, 1, 1, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 5.0])
    cams = torch.randn(3, 9, generator=g) * 0.01 + torch.tensor([1.1, 1.1, 0, 0, 0, 0, 0, 0, 0])
    target = torch.randn(3, 1, 17, 2, generator=g) * 0.1
    terms = semi_supervised_terms(lab, unl, traj, target, cams, H36M17.parents)
    # Bone term as run.py: per-sample mean over frames, mean over each half, |diff|, mean.
    par = list(H36M17.parents[1:])
    cat = torch.cat([lab, unl])
    bl = torch.norm(cat[:, :, 1:] - cat[:, :, par], dim=3).mean(dim=1)
    want = (bl[:5].mean(0) - bl[5:].mean(0)).abs().mean()
    assert terms["bone"].item() == pytest.approx(want.item(), rel=1e-6)
    # Projection term: 2D MPJPE of the (independently written) distortion model.
    p = unl + traj
    x = torch.clamp(p[..., :2] / p[..., 2:], -1, 1)
    f, c, k, t = cams[:, None, None, :2], cams[:, None, None, 2:4], cams[:, None, None, 4:7], cams[:, None, None, 7:]
    r2 = (x ** 2).sum(-1, keepdim=True)
    radial = 1 + k[..., :1] * r2 + k[..., 1:2] * r2 ** 2 + k[..., 2:] * r2 ** 3
    proj = f * (x * (radial + (t * x).sum(-1, keepdim=True)) + t * r2) + c
    assert terms["projection"].item() == pytest.approx(torch.norm(proj - target, dim=-1).mean().item(), rel=1e-6)


def test_semi_supervised_training_one_pass_and_warmup(h36m, tmp_path, monkeypatch) -> None:
    sizes: list[int] = []
    real = TemporalModelOptimized1f.forward

    def spy(self, x):
        sizes.append(x.shape[0])
        return real(self, x)

    monkeypatch.setattr(TemporalModelOptimized1f, "forward", spy)
    summary = train_lifter(_cfg(h36m, tmp_path / "semi"), resume=False)
    monkeypatch.setattr(TemporalModelOptimized1f, "forward", real)
    h1, h2 = summary["history"]
    assert "train_2d_unlabeled" not in h1  # warm-up epoch: supervised only
    for k in ("train_mpjpe_mm", "train_traj_mm", "train_2d_unlabeled", "train_bone_mm"):
        assert math.isfinite(h2[k]) and h2[k] > 0, k
    n_lab = 2 * 4 * (30 + 24)  # S1 windows, doubled by flip
    steps = math.ceil(n_lab / 64)
    assert len(sizes) == 2 * 2 * steps  # pose + trajectory model, one call each per step
    epoch1, epoch2 = sizes[:2 * steps], sizes[2 * steps:]
    last = n_lab - 64 * (steps - 1)
    assert epoch1 == [64, 64] * (steps - 1) + [last, last]  # labeled rows only
    # Epoch 2: each call holds labeled + unlabeled rows (one forward pass, shared BN). S5 has
    # as many windows as S1, and the stream was advanced in warm-up, so pass 2 starts here.
    assert epoch2 == [128, 128] * (steps - 1) + [2 * last, 2 * last]
    sup = train_lifter(_cfg(h36m, tmp_path / "sup", unlabeled_subjects=[]), resume=False)
    assert sup["history"][0]["train_mpjpe_mm"] == pytest.approx(h1["train_mpjpe_mm"])  # same warm-up
    assert sup["history"][1]["train_mpjpe_mm"] != pytest.approx(h2["train_mpjpe_mm"])


def test_semi_supervised_errors(h36m, tmp_path) -> None:
    with pytest.raises(SemiSupervisedError, match="set trajectory: true"):
        train_lifter(_cfg(h36m, tmp_path / "a", trajectory=False), resume=False)
    with pytest.raises(SemiSupervisedError, match=r"h36m_gt\.h5: no sequences of unlabeled subjects \['S7'\]"):
        train_lifter(_cfg(h36m, tmp_path / "b", unlabeled_subjects=["S7"]), resume=False)
    he3, he2 = synth.humaneva_files(tmp_path, {"Train/S1": {"Walking 1 chunk0": 20},
                                               "Train/S2": {"Walking 1 chunk0": 20}})
    rep = import_videopose3d(he3, [he2], "humaneva15", tmp_path / "he")
    cfg = _cfg({"gt": rep.gt_path, "kp": rep.keypoint_paths["gt"]}, tmp_path / "c",
               train_subjects=["Train/S1"], unlabeled_subjects=["Train/S2"], test_subjects=[])
    with pytest.raises(SemiSupervisedError, match=r"humaneva15_gt\.h5: sequence 'Train/S2/Walking 1 "
                                                  r"chunk0/cam0' has no camera intrinsics.*Human3\.6M"):
        train_lifter(cfg, resume=False)
