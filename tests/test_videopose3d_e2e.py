"""VideoPose3D end to end through caches: npz files -> import -> train_lifter ->
evaluate_checkpoint -> per-action tables; recipes; causal / trajectory models; export to
.bin; resume after a crash; GEMM vs conv1d training-model parity; bad-input errors."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.datasets.cache import CacheError, CacheMismatchError
from poselift.datasets.importers.videopose3d import import_videopose3d
from poselift.evaluation import evaluate_sequences
from poselift.lifting.checkpoint import load_checkpoint
from poselift.lifting.config import LiftConfig, load_config
from poselift.lifting.videopose3d.infer import predict_sequence
from poselift.lifting.videopose3d.data import LiftData
from poselift.lifting.videopose3d.eval import evaluate_checkpoint, lifter_records, load_lifter
from poselift.lifting.videopose3d.model import TemporalModel, TemporalModelOptimized1f
from poselift.lifting.videopose3d.train import evaluate_lifter, train_lifter
from poselift.lifting.videopose3d.interop import export_videopose3d, load_videopose3d

_spec = importlib.util.spec_from_file_location("vp3d_synth", Path(__file__).with_name("vp3d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "lift"
H36M_TAKES = {s: {"Walking 1": 40, "Eating": 32} for s in ("S1", "S5", "S9")}
HE_TAKES = {f"{split}/S{i}": {"Walking 1 chunk0": 36, "Jog 1 chunk0": 30, "Box 1 chunk2": 30,
                              "Gestures 1 chunk0": 20}
            for split in ("Train", "Validate") for i in (1, 2, 3)}
torch.set_num_threads(2)


def tiny(gt: Path, kp: Path, out: Path, **kw) -> LiftConfig:
    base = dict(gt_cache=str(gt), keypoints_cache=str(kp), train_subjects=["S1", "S5"],
                test_subjects=["S9"], architecture=[3, 3], channels=32, dropout=0.1, epochs=3,
                batch_size=128, lr=1e-2, eval_every=0, checkpoint_every=0, out_dir=str(out),
                progress=False, seed=7)
    base.update(kw)
    return LiftConfig(**base)


@pytest.fixture(scope="module")
def h36m(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("h36m")
    p3, p2 = synth.h36m_files(d, H36M_TAKES)
    rep = import_videopose3d(p3, [p2], "h36m", d / "caches")
    return {"dir": d, "gt": rep.gt_path, "kp": rep.keypoint_paths["gt"]}


def _untrained_mpjpe(ckpt_path: str, gt: Path, kp: Path, subjects: list[str], actions=None) -> float:
    ck = load_checkpoint(ckpt_path)
    torch.manual_seed(0)
    model = TemporalModel(**ck["model_args"]).eval()
    data = LiftData.open(str(gt), str(kp), subjects, actions)
    preds = evaluate_lifter(model, data, torch.device("cpu"), flip=True, causal=False)
    return evaluate_sequences(lifter_records(preds, data)).overall()["mpjpe"]["mean"]


def test_recipes_resolve() -> None:
    cfgs = {p.stem: load_config(LiftConfig, p) for p in sorted(CONFIGS.glob("*.yaml"))}
    assert set(cfgs) == {"tcn-27f_cpn_h36m", "tcn-81f_cpn_h36m", "tcn-243f_cpn_h36m",
                         "tcn-27f_gt_humaneva15", "tcn-27f_gt_h36m_semi"}
    for rf, arc in ((27, [3, 3, 3]), (81, [3, 3, 3, 3]), (243, [3, 3, 3, 3, 3])):
        c = cfgs[f"tcn-{rf}f_cpn_h36m"]
        assert (c.architecture, c.epochs, c.lr_decay, c.batch_size, c.channels) == (arc, 80, 0.95, 1024, 1024)
        assert (c.train_subjects, c.test_subjects, c.dataset, c.joints_in) == (
            ["S1", "S5", "S6", "S7", "S8"], ["S9", "S11"], "h36m", "h36m17")
        assert c.keypoints_cache.endswith("h36m_cpn_ft_h36m_dbb.h5") and not c.unlabeled_subjects
    he = cfgs["tcn-27f_gt_humaneva15"]
    assert (he.epochs, he.batch_size, he.lr_decay, he.architecture) == (1000, 128, 0.996, [3, 3, 3])
    assert he.train_subjects == ["Train/S1", "Train/S2", "Train/S3"]
    assert he.test_subjects == ["Validate/S1", "Validate/S2", "Validate/S3"]
    assert (he.actions, he.flip_train, he.flip_test, he.by_subject) == (["Walk", "Jog", "Box"], True, True, True)
    assert (he.dataset, he.joints_in, he.joints_out) == ("humaneva15", "humaneva15", "humaneva15")
    semi = cfgs["tcn-27f_gt_h36m_semi"]
    assert (semi.train_subjects, semi.subset, semi.unlabeled_subjects) == (["S1"], 0.1, ["S5", "S6", "S7", "S8"])
    assert (semi.epochs, semi.lr_decay, semi.warmup, semi.batch_size, semi.architecture) == (
        200, 0.98, 5, 64, [3, 3, 3])
    assert semi.trajectory and semi.projection_term and semi.bone_length_term and not semi.linear_projection
    assert semi.keypoints_cache.endswith("h36m_gt.h5")


def test_h36m_train_evaluate_per_action(h36m, tmp_path) -> None:
    cfg = tiny(h36m["gt"], h36m["kp"], tmp_path / "run", epochs=4, eval_every=2, test_subjects=["S9"],
               dataset="h36m", joints_in="h36m17", joints_out="h36m17")
    summary = train_lifter(cfg, resume=False)
    hist = summary["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4] and "test_mpjpe_mm" in hist[1]
    assert hist[-1]["train_mpjpe_mm"] < hist[0]["train_mpjpe_mm"]
    assert summary["receptive_field"] == 9 and summary["dataset"] == "h36m"
    report, paths = evaluate_checkpoint(summary["checkpoint"], str(h36m["gt"]), str(h36m["kp"]), None,
                                        tmp_path / "eval", progress=False)
    table = json.loads(Path(paths["protocol_json"]).read_text())
    assert table["by_subject"] is False and list(table["tables"]) == ["all"]
    rows = table["tables"]["all"]["rows"]
    assert sorted(rows) == ["Eating", "Walking"]
    assert rows["Walking"]["frames"] == 40 * 4 and rows["Eating"]["frames"] == 32 * 4
    avg = table["tables"]["all"]["average"]
    assert avg["p1"] == pytest.approx((rows["Eating"]["p1"] + rows["Walking"]["p1"]) / 2)
    assert avg["p2"] <= avg["p1"] and avg["p3"] <= avg["p1"] + 1e-6
    assert "| Walking | 160 |" in Path(paths["protocol"]).read_text()
    untrained = _untrained_mpjpe(summary["checkpoint"], h36m["gt"], h36m["kp"], ["S9"])
    assert report.overall()["mpjpe"]["mean"] < 0.7 * untrained


def test_humaneva_by_subject(tmp_path) -> None:
    p3, p2 = synth.humaneva_files(tmp_path, HE_TAKES)
    rep = import_videopose3d(p3, [p2], "humaneva15", tmp_path / "caches")
    cfg = load_config(LiftConfig, CONFIGS / "tcn-27f_gt_humaneva15.yaml", {
        "gt_cache": str(rep.gt_path), "keypoints_cache": str(rep.keypoint_paths["gt"]),
        "epochs": 4, "channels": 32, "architecture": "3,3", "lr": 1e-2, "eval_every": 0,
        "checkpoint_every": 0, "out_dir": str(tmp_path / "run"), "progress": False})
    summary = train_lifter(cfg, resume=False)
    report, paths = evaluate_checkpoint(summary["checkpoint"], str(rep.gt_path),
                                        str(rep.keypoint_paths["gt"]), None, tmp_path / "eval",
                                        progress=False)
    table = json.loads(Path(paths["protocol_json"]).read_text())
    assert table["by_subject"] is True  # from the recipe's by_subject, via the checkpoint
    assert sorted(table["tables"]) == ["Validate/S1", "Validate/S2", "Validate/S3"]
    for sub in table["tables"].values():  # Gestures is filtered out by the recipe's actions
        assert sorted(sub["rows"]) == ["Box", "Jog", "Walking"]
        assert sub["rows"]["Walking"]["frames"] == 36 * 3
    assert "### Subject Validate/S2" in Path(paths["protocol"]).read_text()
    untrained = _untrained_mpjpe(summary["checkpoint"], rep.gt_path, rep.keypoint_paths["gt"],
                                 cfg.test_subjects, cfg.actions)
    assert report.overall()["mpjpe"]["mean"] < 0.7 * untrained


def test_causal_trajectory_model_trains_and_exports(h36m, tmp_path) -> None:
    cfg = tiny(h36m["gt"], h36m["kp"], tmp_path / "run", causal=True, trajectory=True, epochs=3)
    summary = train_lifter(cfg, resume=False)
    hist = summary["history"]
    assert hist[-1]["train_traj_mm"] < hist[0]["train_traj_mm"]
    assert hist[-1]["train_mpjpe_mm"] < hist[0]["train_mpjpe_mm"]
    model, ck = load_lifter(summary["checkpoint"])
    assert model.causal and ck["extra"]["traj_args"]["num_joints_out"] == 1
    # Causal: the prediction at frame t does not change when only later frames change.
    data = LiftData.open(str(h36m["gt"]), str(h36m["kp"]), ["S9"])
    x = data.sequence_inputs(data.ids[0])
    x2 = x.copy()
    x2[20:] += 0.3
    a = predict_sequence(model, x, pad=4, causal_shift=4)
    b = predict_sequence(model, x2, pad=4, causal_shift=4)
    np.testing.assert_array_equal(a[:20], b[:20])
    assert np.abs(a[20:] - b[20:]).max() > 1e-4
    # Export as a run.py .bin and load it back with the reference loader.
    traj = TemporalModel(**ck["extra"]["traj_args"])
    traj.load_state_dict(ck["extra"]["traj_state_dict"])
    export_videopose3d(tmp_path / "exported.bin", model, traj.eval(), epoch=3)
    pos2, traj2 = load_videopose3d(tmp_path / "exported.bin", causal=True)
    inp = torch.from_numpy(x[None])
    with torch.no_grad():
        torch.testing.assert_close(pos2(inp), model(inp), rtol=0, atol=0)
        torch.testing.assert_close(traj2(inp), traj.eval()(inp), rtol=0, atol=0)


def test_resume_after_crash_is_exact(h36m, tmp_path, monkeypatch) -> None:
    cfg = tiny(h36m["gt"], h36m["kp"], tmp_path / "a", epochs=2, train_subjects=["S1"],
               unlabeled_subjects=["S5"], trajectory=True, warmup=1, batch_size=64)
    full = train_lifter(cfg, resume=False)
    from poselift.lifting.videopose3d import semi_supervised

    calls = {"n": 0}
    real = semi_supervised.UnlabeledStream.next_batch

    def crash(self):  # unlabeled batches are gathered from epoch 2 on (warmup 1): crash mid-epoch
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(self)

    cfg_b = dataclasses.replace(cfg, out_dir=str(tmp_path / "b"))
    monkeypatch.setattr(semi_supervised.UnlabeledStream, "next_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        train_lifter(cfg_b, resume=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(semi_supervised.UnlabeledStream, "next_batch", real)
    resumed = train_lifter(cfg_b, resume=True)
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for part in ("state_dict",):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=k)
    for k in a["extra"]["traj_state_dict"]:
        torch.testing.assert_close(a["extra"]["traj_state_dict"][k], b["extra"]["traj_state_dict"][k],
                                   rtol=0, atol=0)
    assert a["extra"]["unlabeled_stream"] == b["extra"]["unlabeled_stream"]
    assert [h["train_mpjpe_mm"] for h in full["history"]] == [h["train_mpjpe_mm"] for h in resumed["history"]]


@pytest.mark.parametrize("causal", [False, True])
def test_gemm_strided_model_matches_conv1d_in_train_mode(causal: bool) -> None:
    kw = dict(num_joints_in=5, in_features=2, num_joints_out=4, filter_widths=[3, 3, 3],
              causal=causal, dropout=0.0, channels=24)
    torch.manual_seed(0)  # float64: the two differ only by summation order
    gemm = TemporalModelOptimized1f(**kw, impl="gemm").double()
    conv = TemporalModelOptimized1f(**kw, impl="conv").double()
    with torch.no_grad():  # non-trivial BN parameters and statistics
        for bn in [gemm.expand_bn, *gemm.layers_bn]:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.1, 0.1)
    conv.load_state_dict(gemm.state_dict())
    x = torch.randn(6, 27, 5, 2, dtype=torch.float64)
    y_g, y_c = gemm.train()(x), conv.train()(x)
    torch.testing.assert_close(y_g, y_c, rtol=1e-10, atol=1e-10)
    assert gemm.expand_bn.num_batches_tracked.item() == conv.expand_bn.num_batches_tracked.item() == 1
    for (k, a), b in zip(gemm.state_dict().items(), conv.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)  # BN running stats
    target = torch.randn_like(y_g)
    ((y_g - target) ** 2).sum().backward()
    ((y_c - target) ** 2).sum().backward()
    for (k, a), b in zip(gemm.named_parameters(), conv.parameters()):
        assert a.grad is not None and a.grad.abs().max() > 0
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10, msg=k)
    # And both equal the dilated evaluation model on the same window in eval mode.
    ev = TemporalModel(**kw).double()
    ev.load_state_dict(gemm.state_dict())
    torch.testing.assert_close(ev.eval()(x), gemm.eval()(x), rtol=1e-10, atol=1e-10)


def test_wrong_joint_layout_and_wrong_dataset_are_refused(h36m, tmp_path) -> None:
    p3, p2 = synth.h36m_files(tmp_path, {"S1": {"Walking 1": 12}}, coco_layout=True)
    coco = import_videopose3d(p3, [p2], "h36m", tmp_path / "coco").keypoint_paths["gt"]
    cfg = tiny(h36m["gt"], coco, tmp_path / "run", train_subjects=["S1"], joints_in="h36m17")
    with pytest.raises(CacheMismatchError, match=r"h36m_gt\.h5.*joint_set: file has 'coco17', "
                                                 r"expected 'h36m17'"):
        train_lifter(cfg, resume=False)
    he3, he2 = synth.humaneva_files(tmp_path, {"Train/S1": {"Walking 1 chunk0": 12}})
    he = import_videopose3d(he3, [he2], "humaneva15", tmp_path / "he").keypoint_paths["gt"]
    with pytest.raises(CacheError, match=r"humaneva15_gt\.h5 is for dataset 'humaneva15'.*'h36m'"):
        train_lifter(tiny(h36m["gt"], he, tmp_path / "run2"), resume=False)
    with pytest.raises(CacheMismatchError, match="dataset: file has 'h36m', expected 'humaneva15'"):
        train_lifter(tiny(h36m["gt"], h36m["kp"], tmp_path / "run3", dataset="humaneva15"), resume=False)
    # A checkpoint trained on H36M caches refuses HumanEva caches at evaluation.
    summary = train_lifter(tiny(h36m["gt"], h36m["kp"], tmp_path / "run4", epochs=1), resume=False)
    with pytest.raises(CacheMismatchError, match="expected 'h36m'"):
        evaluate_checkpoint(summary["checkpoint"], str(tmp_path / "he" / "humaneva15_3d.h5"), str(he),
                            ["Train/S1"], tmp_path / "eval", progress=False)
