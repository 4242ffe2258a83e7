"""TCMR evaluation protocols, streamed PVE, checkpoints of both kinds, CLI with mesh export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from poselift.evaluation import pve as pve_metric
from poselift.lifting.evaluate_cli import main as evaluate_main
from poselift.lifting.tcmr.rotations import axis_angle_to_rotmat
from poselift.synthetic.smpl import make_synthetic_smpl
from poselift.lifting.tcmr.data import open_source
from poselift.lifting.tcmr.eval import (PROTOCOLS, evaluate_source, frame_mask, h36m_regressor,
                                        load_tcmr_any, predict_source, protocol_records)
from poselift.synthetic.tcmr import make_tiny_tcmr_caches
from poselift.lifting.tcmr.train import TCMRConfig, build_tcmr
from poselift.lifting.checkpoint import save_checkpoint

F = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("ev")
    caches = make_tiny_tcmr_caches(d / "c", feat_dim=F)
    body = make_synthetic_smpl(d / "smpl")
    torch.manual_seed(0)
    cfg = TCMRConfig(body_model_dir=str(body), n_layers=1, hidden_size=16, feat_dim=F,
                     regressor_hidden=32)
    model = build_tcmr(cfg).eval()
    return caches, body, model, d


def test_frame_mask_vibe_chunks():
    valid = np.array([True, False] * 20)
    np.testing.assert_array_equal(frame_mask(40, valid, False), valid)
    m = frame_mask(40, valid, True)
    assert m[:32].all() and not m[32:].any()
    assert not frame_mask(15, None, True).any()  # videos < 16 frames are dropped by VIBE


def test_protocol_centring_masks_and_per_sequence_accel(setup):
    caches, body, model, _ = setup
    src = open_source(caches, "3dpw_test", feat_dim=F)
    rng = np.random.default_rng(0)
    preds = {s: {"joints": rng.normal(size=(src.labels.info(s).n_frames, 14, 3))} for s in src.ids}
    recs, _ = protocol_records(preds, src, PROTOCOLS["3dpw"])
    for r in recs:
        np.testing.assert_allclose(r.pred[:, [2, 3]].mean(axis=1), 0, atol=1e-12)  # hips mean
        np.testing.assert_allclose(r.gt[:, [2, 3]].mean(axis=1), 0, atol=1e-12)
        np.testing.assert_array_equal(r.mask, src.labels.read(r.seq_id, "valid"))
        raw = src.labels.read(r.seq_id, "joints_3d")
        np.testing.assert_allclose(r.gt, raw - raw[:, [2, 3]].mean(axis=1, keepdims=True), atol=1e-6)
    from poselift.evaluation import evaluate_sequences

    rep = evaluate_sequences(recs)
    # acceleration error per video: triplets fully valid, never across the two videos
    want = sum(int((r.mask[:-2] & r.mask[1:-1] & r.mask[2:]).sum()) for r in recs)
    assert rep.overall()["accel_error"]["count"] == want
    assert rep.overall()["mpjpe"]["count"] == sum(int(r.mask.sum()) for r in recs)
    mpi = PROTOCOLS["mpii3d"]
    assert mpi.center == (14,) and mpi.spin49_select[14] == 39 and not mpi.h36m_regressor


def test_predict_every_frame_once_and_streamed_pve(setup):
    caches, body, model, _ = setup
    src = open_source(caches, "3dpw_test", feat_dim=F)
    reg = h36m_regressor(body, 6890)
    sid = src.ids[0]
    n = src.labels.info(sid).n_frames
    out = predict_source(model, src, PROTOCOLS["3dpw"], J_regressor=reg, ids=[sid],
                         export={sid: {0, 5, n - 1}})
    assert list(out) == [sid] and out[sid]["joints"].shape == (n, 14, 3)
    np.testing.assert_array_equal(out[sid]["verts_frames"], [0, 5, n - 1])
    # explicit meshes for the exported frames -> same per-frame PVE as the streamed one
    pose = torch.from_numpy(src.labels.read(sid, "smpl_pose")).float()
    shape = torch.from_numpy(src.labels.read(sid, "smpl_shape")).float()
    with torch.no_grad():
        gt_v = model.regressor.smpl(shape, axis_angle_to_rotmat(pose.reshape(-1, 3)).reshape(-1, 24, 3, 3)).vertices
    fr = out[sid]["verts_frames"]
    np.testing.assert_allclose(out[sid]["pve"][fr], pve_metric(out[sid]["verts"], gt_v[fr].numpy()),
                               rtol=1e-5)
    # frame 0 of a border window = 16 copies of frame 0: same as feeding that by hand
    feats = torch.from_numpy(src.features.read(sid, "features")[[0] * 16][None]).float()
    with torch.no_grad():
        ref = model(feats, is_train=False, J_regressor=reg)["kp_3d"][0].numpy()
    np.testing.assert_allclose(out[sid]["joints"][0], ref, rtol=1e-5, atol=1e-6)


def test_own_and_reference_checkpoints_evaluate_identically(setup, tmp_path):
    caches, body, model, _ = setup
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("regressor.smpl.")}
    args = dict(n_layers=1, hidden_size=16, seq_len=16, feat_dim=F, regressor_hidden=32)
    save_checkpoint(tmp_path / "own.pt", model_name="tcmr", model_args=args, state_dict=sd,
                    config={}, cache_fingerprints={}, epoch=1)
    ref = {"epoch": 3, "gen_state_dict": model.state_dict(), "performance": np.float64(52.7),
           "gen_optimizer": {}, "disc_motion_state_dict": {}, "disc_motion_optimizer": {}}
    torch.save(ref, tmp_path / "model_best.pth.tar")
    a, ia = load_tcmr_any(tmp_path / "own.pt", body)
    b, ib = load_tcmr_any(tmp_path / "model_best.pth.tar", body)
    assert (ia["kind"], ib["kind"]) == ("poselift", "reference")
    src = open_source(caches, "3dpw_test", feat_dim=F)
    reg = h36m_regressor(body, 6890)
    ra, info, _ = evaluate_source(a, src, "3dpw", J_regressor=reg)
    rb, _, _ = evaluate_source(b, src, "3dpw", J_regressor=reg)
    assert ra.overall()["p_mpjpe"]["mean"] == pytest.approx(rb.overall()["p_mpjpe"]["mean"], rel=1e-6)
    assert ra.overall()["pve"]["count"] == ra.overall()["mpjpe"]["count"] > 0
    assert info["frame_set"] == "all frames with valid=True"
    rv, iv, _ = evaluate_source(a, src, "3dpw", J_regressor=reg, match_vibe=True)
    assert rv.frame_counts()["evaluated"] == 16 + 16 and "16-frame chunks" in iv["frame_set"]
    with pytest.raises(ValueError, match="needs the H36M joint regressor"):
        evaluate_source(a, src, "3dpw", J_regressor=None)


def test_evaluate_cli_writes_report_meshes_and_snapshot(setup, tmp_path):
    caches, body, model, _ = setup
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("regressor.smpl.")}
    save_checkpoint(tmp_path / "own.pt", model_name="tcmr",
                    model_args=dict(n_layers=1, hidden_size=16, seq_len=16, feat_dim=F,
                                    regressor_hidden=32),
                    state_dict=sd, config={}, cache_fingerprints={}, epoch=1)
    src = open_source(caches, "3dpw_test", feat_dim=F)
    sid = src.ids[1]
    rc = evaluate_main(["tcmr", "--checkpoint", str(tmp_path / "own.pt"), "--body-model-dir", str(body),
                        "--cache-dir", str(caches), "--source", "3dpw_test", "--protocol", "3dpw",
                        "--out", str(tmp_path / "out"), "--device", "cpu", "--export-meshes", sid,
                        "--mesh-frames", "0:18:8", "--mesh-format", "ply"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["protocol"]["protocol"]["name"] == "3dpw" and "pve" in doc["overall"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pa_mpjpe"] == pytest.approx(doc["overall"]["p_mpjpe"]["mean"])
    mesh_dir = tmp_path / "out" / "meshes" / sid
    assert sorted(p.name for p in mesh_dir.glob("*.ply")) == [
        "frame_000000.ply", "frame_000008.ply", "frame_000016.ply"]
    assert (mesh_dir / "snapshot_000000.png").stat().st_size > 1000
    assert (tmp_path / "out" / "report.md").read_text().startswith("# TCMR evaluation")
    rc = evaluate_main(["tcmr", "--checkpoint", str(tmp_path / "own.pt"), "--body-model-dir", str(body),
                        "--cache-dir", str(caches), "--source", "3dpw_test", "--protocol", "3dpw",
                        "--out", str(tmp_path / "o2"), "--export-meshes", "nope"])
    assert rc == 2
