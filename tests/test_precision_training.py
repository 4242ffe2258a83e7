"""Reduced-precision training end to end: ``precision: bf16`` lifter and TCMR runs train,
record the precision in checkpoints and reports, and their checkpoints evaluate in fp32."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.datasets.importers.videopose3d import import_videopose3d
from poselift.lifting.checkpoint import load_checkpoint
from poselift.lifting.config import LiftConfig
from poselift.lifting.videopose3d.data import LiftData
from poselift.lifting.videopose3d.eval import load_lifter
from poselift.synthetic.smpl import make_synthetic_smpl
from poselift.lifting.tcmr.interop import load_tcmr_state_dict
from poselift.lifting.tcmr.eval import evaluate_source, h36m_regressor
from poselift.lifting.tcmr.data import open_source
from poselift.synthetic.tcmr import make_tiny_tcmr_caches
from poselift.lifting.videopose3d.train import evaluate_lifter, train_lifter
from poselift.lifting.tcmr.train import TCMRConfig, build_tcmr, train_tcmr

_spec = importlib.util.spec_from_file_location("vp3d_synth", Path(__file__).with_name("vp3d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)


def test_bf16_lifter_run_records_precision_and_evaluates_in_fp32(tmp_path):
    p3, p2 = synth.h36m_files(tmp_path, {s: {"Walking 1": 40} for s in ("S1", "S9")})
    rep = import_videopose3d(p3, [p2], "h36m", tmp_path / "caches")
    cfg = LiftConfig(gt_cache=str(rep.gt_path), keypoints_cache=str(rep.keypoint_paths["gt"]),
                     train_subjects=["S1"], test_subjects=["S9"], architecture=[3, 3], channels=32,
                     dropout=0.0, epochs=6, batch_size=64, lr=1e-2, eval_every=0, checkpoint_every=0,
                     out_dir=str(tmp_path / "run"), progress=False, seed=3, precision="bf16",
                     num_threads=1)
    summary = train_lifter(cfg, resume=False)
    losses = [h["train_mpjpe_mm"] for h in summary["history"]]
    assert losses[-1] < losses[0] / 2, losses
    assert summary["precision"]["resolved"] == "bf16"
    assert all(h["precision"] == "bf16" for h in summary["history"])
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["extra"]["precision"]["autocast_dtype"] == "bfloat16" and ck["config"]["precision"] == "bf16"
    assert all(v.dtype in (torch.float32, torch.int64) for v in ck["state_dict"].values())
    model, _ = load_lifter(tmp_path / "run" / "last.pt")  # plain float32 evaluation
    test = LiftData.open(cfg.gt_cache, cfg.keypoints_cache, ["S9"])
    preds = evaluate_lifter(model, test, torch.device("cpu"), flip=False, causal=False)
    assert all(p.dtype == np.float32 and np.isfinite(p).all() for p in preds.values())


def test_bf16_tcmr_run_trains_and_checkpoint_evaluates_in_fp32(tmp_path):
    caches = make_tiny_tcmr_caches(tmp_path / "caches", feat_dim=32)
    body = make_synthetic_smpl(tmp_path / "smpl")
    cfg = TCMRConfig(cache_dir=str(caches), train_2d=["insta_train"], train_3d=["3dpw_train"],
                     val="3dpw_val", test=["3dpw_test"], body_model_dir=str(body), n_layers=1,
                     hidden_size=16, feat_dim=32, regressor_hidden=32, batch_size=8, iters_per_epoch=8,
                     epochs=3, lr=1e-3, progress=False, device="cpu", out_dir=str(tmp_path / "t"),
                     num_threads=1, precision="bf16")
    summary = train_tcmr(cfg)
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(h["precision"] == "bf16" for h in summary["history"])
    ck = load_checkpoint(tmp_path / "t" / "last.pt")
    assert ck["extra"]["precision"]["resolved"] == "bf16"
    model = build_tcmr(cfg)
    load_tcmr_state_dict(model, ck["state_dict"], "last.pt")
    report, _, _ = evaluate_source(model.eval(), open_source(caches, "3dpw_val", feat_dim=32), "3dpw",
                                   J_regressor=h36m_regressor(body, 6890))
    assert np.isfinite(report.overall()["p_mpjpe"]["mean"])


def test_fp16_config_on_cpu_fails_before_training(tmp_path):
    cfg = LiftConfig(gt_cache="x", keypoints_cache="y", precision="fp16", out_dir=str(tmp_path / "r"),
                     device="cpu")
    with pytest.raises(ValueError, match="'fp16' is not supported on the CPU"):
        train_lifter(cfg, resume=False)
