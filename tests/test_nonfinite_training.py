"""Non-finite guards in training: a NaN in a cache is refused at load time naming file,
sequence, field and frame (poselift-train exits 2 instead of training to NaN); a non-finite
loss stops training naming epoch, step and batch and keeps the last good checkpoint; bad
``--set`` values name the key and the expected type."""
from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from poselift.datasets.importers.videopose3d import import_videopose3d
from poselift.lifting.videopose3d import train as tl
from poselift.lifting.cli import main as train_main
from poselift.lifting.config import LiftConfig, load_config

_spec = importlib.util.spec_from_file_location("vp3d_synth", Path(__file__).with_name("vp3d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("nan")
    p3, p2 = synth.h36m_files(d, {"S1": {"Walking 1": 30}, "S9": {"Walking 1": 20}})
    rep = import_videopose3d(p3, [p2], "h36m", d / "caches")
    return {"gt": Path(rep.gt_path), "kp": Path(rep.keypoint_paths["gt"])}


def _poison(src: Path, dst: Path, field: str, row: int, subject: str = "S1") -> str:
    """Copy ``src`` and write NaN into ``field`` at ``row`` of its first ``subject`` sequence, behind
    the writer's back (what a flipped bit or a buggy external tool does)."""
    shutil.copy(src, dst)
    hit: list[str] = []
    with h5py.File(dst, "r+") as f:
        def visit(name: str, obj) -> None:
            if not hit and isinstance(obj, h5py.Dataset) and name.endswith("/" + field) and subject in name:
                arr = obj[()]
                arr[row] = np.nan
                obj[...] = arr
                hit.append(name)
        f.visititems(visit)
    assert hit
    return hit[0]


def _args(gt: Path, kp: Path, out: Path, *extra: str) -> list[str]:
    return ["lift", "--gt", str(gt), "--keypoints", str(kp), "--out-dir", str(out), "--no-resume",
            "--set", "train_subjects=S1", "--set", "test_subjects=S9", "--set", "architecture=3,3",
            "--set", "channels=16", "--set", "epochs=1", "--set", "eval_every=0",
            "--set", "progress=false", "--set", "batch_size=64", *extra]


def test_nan_cache_is_refused_by_poselift_train(caches, tmp_path, capsys) -> None:
    kp = tmp_path / "kp_nan.h5"
    _poison(caches["kp"], kp, "keypoints", 7)
    rc = train_main(_args(caches["gt"], kp, tmp_path / "run"))
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(line) == 1 and "kp_nan.h5" in line[0] and "'S1" in line[0]
    assert "field 'keypoints'" in line[0] and "at frame 7" in line[0]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_nan_in_targets_named_too(caches, tmp_path) -> None:
    gt = tmp_path / "gt_nan.h5"
    _poison(caches["gt"], gt, "joints_3d", 12)
    cfg = load_config(LiftConfig, None, {"gt_cache": str(gt), "keypoints_cache": str(caches["kp"]),
                                         "train_subjects": "S1", "test_subjects": "S9",
                                         "architecture": "3,3", "channels": 16, "epochs": 1,
                                         "eval_every": 0, "progress": False, "out_dir": str(tmp_path)})
    with pytest.raises(Exception, match=r"gt_nan\.h5: sequence 'S1.*field 'joints_3d'.*at frame 12"):
        tl.train_lifter(cfg, resume=False)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(caches, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    assert train_main(_args(caches["gt"], caches["kp"], out)) == 0
    good = (out / "last.pt").read_bytes()
    real = tl._train_step
    calls = {"n": 0}

    def nan_on_second(*a, **k):
        loss, parts = real(*a, **k)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), parts

    monkeypatch.setattr(tl, "_train_step", nan_on_second)
    rc = train_main(_args(caches["gt"], caches["kp"], out, "--set", "epochs=2"))
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite training loss" in err and "epoch 1, step 2" in err, err
    assert "was not overwritten" in err and "'S1" in err
    assert (out / "last.pt").read_bytes() == good


@pytest.mark.parametrize("item, want", [("epochs=abc", r"'epochs': expected int, got 'abc'"),
                                        ("lr=fast", r"'lr': expected float, got 'fast'"),
                                        ("architecture=3,x", r"'architecture': expected a comma-separated list of int")])
def test_bad_set_values_name_key_and_type(tmp_path, capsys, item, want) -> None:
    rc = train_main(["lift", "--gt", "g.h5", "--keypoints", "k.h5", "--set", item, "--print-config"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert re.search(want, err), err


def test_evaluation_refuses_nan_inputs(caches, tmp_path) -> None:
    from poselift.lifting.videopose3d.eval import evaluate_checkpoint

    out = tmp_path / "run"
    assert train_main(_args(caches["gt"], caches["kp"], out)) == 0
    kp = tmp_path / "kp_eval_nan.h5"
    _poison(caches["kp"], kp, "keypoints", 5, subject="S9")
    with pytest.raises(Exception, match=r"kp_eval_nan\.h5: sequence 'S9.*field 'keypoints'.*at frame 5"):
        evaluate_checkpoint(out / "last.pt", str(caches["gt"]), str(kp), ["S9"], tmp_path / "ev",
                            progress=False)
