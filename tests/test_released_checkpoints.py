"""Released checkpoints through the CLIs: a VideoPose3D .bin (reference layout, written by
export_videopose3d) evaluated by ``poselift-evaluate lifter`` and fine-tuned by
``poselift-train lift --init``; TCMR/VIBE .pth.tar (reference layout) likewise for ``tcmr``."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from poselift.datasets.importers.videopose3d import import_videopose3d
from poselift.lifting import evaluate_cli, cli as train_cli
from poselift.lifting.checkpoint import load_checkpoint
from poselift.lifting.videopose3d import train as lift_train
from poselift.lifting.videopose3d.data import LiftData
from poselift.lifting.videopose3d.eval import write_lifter_report
from poselift.lifting.videopose3d.interop import export_videopose3d, load_videopose3d
from poselift.lifting.videopose3d.model import TemporalModel
from poselift.lifting.videopose3d.train import evaluate_lifter

_spec = importlib.util.spec_from_file_location("vp3d_synth", Path(__file__).with_name("vp3d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)
torch.set_num_threads(1)

TAKES = {s: {"Walking 1": 40, "Eating": 32} for s in ("S1", "S5", "S9")}


@pytest.fixture(scope="module")
def h36m(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("h36m")
    p3, p2 = synth.h36m_files(d, TAKES)
    rep = import_videopose3d(p3, [p2], "h36m", d / "caches")
    return {"gt": str(rep.gt_path), "kp": str(rep.keypoint_paths["gt"])}


def _random_lifter(seed: int, j_out: int = 17, widths=(3, 3), channels: int = 32) -> TemporalModel:
    torch.manual_seed(seed)
    m = TemporalModel(17, 2, j_out, list(widths), channels=channels)
    with torch.no_grad():  # non-trivial BN statistics, so a missed buffer would show
        for bn in [m.expand_bn, *m.layers_bn]:
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _bin(path: Path, seed: int = 0, traj: bool = True, **kw) -> Path:
    export_videopose3d(path, _random_lifter(seed, **kw), _random_lifter(seed + 1, j_out=1, **kw)
                       if traj else None, epoch=5, lr=1e-3)
    return path


def _eval_cli(*args: str) -> int:
    return evaluate_cli.main(["lifter", *map(str, args)])


@pytest.mark.parametrize("causal", [False, True])
def test_evaluate_bin_through_cli_equals_python_api(h36m, tmp_path, causal) -> None:
    ck = _bin(tmp_path / "released.bin")
    flags = ["--causal"] if causal else []
    assert _eval_cli("--checkpoint", ck, "--gt", h36m["gt"], "--keypoints", h36m["kp"], "--subjects",
                     "S9", "--out", tmp_path / "cli", "--dataset", "h36m", "--joints-in", "h36m17",
                     *flags) == 0
    model, traj = load_videopose3d(ck, causal=causal)
    assert traj is not None and model.receptive_field() == 9
    data = LiftData.open(h36m["gt"], h36m["kp"], ["S9"])
    preds = evaluate_lifter(model, data, torch.device("cpu"), flip=True, causal=causal)
    write_lifter_report(preds, data, tmp_path / "api", plots=False)
    cli_doc = json.loads((tmp_path / "cli" / "protocol.json").read_text())
    api_doc = json.loads((tmp_path / "api" / "protocol.json").read_text())
    assert cli_doc == api_doc
    avg = cli_doc["tables"]["all"]["average"]
    assert avg["p1"] > 0 and sorted(cli_doc["tables"]["all"]["rows"]) == ["Eating", "Walking"]
    extra = json.loads((tmp_path / "cli" / "report.json").read_text())["extra"]
    assert (extra["checkpoint_kind"], extra["causal"], extra["receptive_field"],
            extra["trajectory_model"]) == ("videopose3d", causal, 9, True)


def test_evaluate_bin_bad_inputs_are_one_line(h36m, tmp_path, capsys) -> None:
    ck = _bin(tmp_path / "released.bin", traj=False)
    base = ["--checkpoint", ck, "--gt", h36m["gt"], "--keypoints", h36m["kp"], "--out", tmp_path / "o"]
    assert _eval_cli(*base) == 2  # a .bin says nothing about the test split
    assert "released.bin: records no test subjects" in capsys.readouterr().err
    assert _eval_cli(*base, "--subjects", "S9", "--joints-in", "coco17") == 2
    assert "joint_set: file has 'h36m17', expected 'coco17'" in capsys.readouterr().err
    wrong = _bin(tmp_path / "j16.bin", traj=False, j_out=16)
    assert _eval_cli(*base[:1], wrong, *base[2:], "--subjects", "S9") == 2
    err = capsys.readouterr().err.strip()
    assert "j16.bin: the model predicts 16 joints" in err and "'h36m17' with 17" in err
    assert len(err.splitlines()) == 1
    junk = tmp_path / "junk.bin"
    for raw in (b"not a checkpoint", b"junk"):  # the second made torch raise struct.error
        junk.write_bytes(raw)
        assert _eval_cli(*base[:1], junk, *base[2:], "--subjects", "S9") == 2
        err = capsys.readouterr().err.strip()
        assert "junk.bin: " in err and len(err.splitlines()) == 1, err
    assert "junk.bin: not a readable torch checkpoint (error: unpack requires" in err


def _train_args(h36m, out: Path, *extra: str) -> list[str]:
    return ["lift", "--gt", h36m["gt"], "--keypoints", h36m["kp"], "--out-dir", str(out), "--set",
            "train_subjects=S1,S5", "--set", "test_subjects=S9", "--set", "architecture=3,3", "--set",
            "channels=32", "--set", "batch_size=128", "--set", "lr=1e-2", "--set", "eval_every=0",
            "--set", "checkpoint_every=0", "--set", "progress=false", "--set", "seed=7",
            "--set", "num_threads=1", *extra]


def test_train_lift_init_from_bin(h36m, tmp_path, monkeypatch, capsys) -> None:
    ck = _bin(tmp_path / "released.bin", seed=3)
    file_pos, file_traj = load_videopose3d(ck)
    seen: list[dict] = []
    real = lift_train._train_step

    def spy(batch, unl, model, traj_model, *a, **kw):  # weights at the first step of epoch 1
        if not seen:
            seen.append({"pos": {k: v.clone() for k, v in model.state_dict().items()},
                         "traj": {k: v.clone() for k, v in traj_model.state_dict().items()}})
        return real(batch, unl, model, traj_model, *a, **kw)

    monkeypatch.setattr(lift_train, "_train_step", spy)
    out = tmp_path / "ft"
    assert train_cli.main(_train_args(h36m, out, "--init", str(ck), "--set", "epochs=3",
                                      "--set", "trajectory=true")) == 0
    for part, ref in (("pos", file_pos), ("traj", file_traj)):
        want = ref.state_dict()
        assert set(seen[0][part]) == set(want)
        for k, v in want.items():
            torch.testing.assert_close(seen[0][part][k], v, rtol=0, atol=0, msg=k)
    summary = json.loads((out / "summary.json").read_text())
    hist = [h["train_mpjpe_mm"] for h in summary["history"]]
    # Measured (AMD EPYC, 1 thread): 655 -> 374 -> 284 mm; 0.8 leaves room for other CPUs.
    assert hist[-1] < 0.8 * hist[0], hist
    sha = hashlib.sha256(ck.read_bytes()).hexdigest()
    last = load_checkpoint(out / "last.pt")
    for rec in (summary["init"], last["extra"]["init"]):
        assert (rec["sha256"], rec["kind"], rec["path"], rec["epoch"], rec["trajectory"]) == (
            sha, "videopose3d", str(ck.resolve()), 5, True)
    assert last["config"]["init"] == str(ck)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2 * 0.95 ** 2)  # fresh, not the file's
    # The poselift checkpoint evaluates through the same command; its recorded flags are fixed.
    base = ["--checkpoint", out / "last.pt", "--gt", h36m["gt"], "--keypoints", h36m["kp"]]
    assert _eval_cli(*base, "--out", tmp_path / "ev", "--dataset", "h36m") == 0
    extra = json.loads((tmp_path / "ev" / "report.json").read_text())["extra"]
    assert (extra["checkpoint_kind"], extra["trajectory_model"]) == ("poselift", True)
    capsys.readouterr()
    assert _eval_cli(*base, "--out", tmp_path / "ev2", "--causal") == 2
    assert "records causal=False" in capsys.readouterr().err
    # Fine-tuning from the result (exported as .bin) starts far below a from-scratch run.
    _export_last(last, tmp_path / "trained.bin")
    again = tmp_path / "ft2"
    assert train_cli.main(_train_args(h36m, again, "--init", str(tmp_path / "trained.bin"),
                                      "--set", "epochs=1")) == 0
    first = json.loads((again / "summary.json").read_text())["history"][0]["train_mpjpe_mm"]
    assert first < 0.7 * hist[0], (first, hist)  # measured 232 vs 655 mm
    # Resuming the same run with another --init is refused.
    capsys.readouterr()
    assert train_cli.main(_train_args(h36m, out, "--init", str(tmp_path / "trained.bin"),
                                      "--set", "epochs=4", "--set", "trajectory=true")) == 2
    assert "started from init" in capsys.readouterr().err


def _export_last(last: dict, path: Path) -> Path:
    pos = TemporalModel(**last["model_args"])
    pos.load_state_dict(last["state_dict"])
    traj = TemporalModel(**last["extra"]["traj_args"])
    traj.load_state_dict(last["extra"]["traj_state_dict"])
    export_videopose3d(path, pos, traj)
    return path


def test_train_lift_init_architecture_mismatch_is_one_line(h36m, tmp_path, capsys) -> None:
    ck = _bin(tmp_path / "released.bin", traj=False, widths=(3, 3, 3))
    assert train_cli.main(_train_args(h36m, tmp_path / "x", "--init", str(ck), "--set", "epochs=1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "released.bin [model_pos]: unexpected key(s)" in err and "'layers_conv.2.weight'" in err
    assert "the file holds filter_widths [3, 3, 3]" in err and "configured model has filter_widths [3, 3]" in err


def test_zoo_name_evaluates_and_inits(h36m, tmp_path, monkeypatch) -> None:
    from poselift.zoo import table as tbl

    monkeypatch.setenv("POSELIFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSELIFT_OFFLINE", "1")  # the file placed by hand: no network
    for k in ("POSELIFT_WEIGHTS_MIRROR", "POSELIFT_ZOO_EXTRA"):
        monkeypatch.delenv(k, raising=False)
    tbl._load.cache_clear()
    (tmp_path / "home" / "weights").mkdir(parents=True)
    ck = _bin(tmp_path / "home" / "weights" / "pretrained_h36m_cpn.bin", traj=False)
    assert _eval_cli("--checkpoint", "videopose3d-h36m-cpn", "--gt", h36m["gt"], "--keypoints", h36m["kp"],
                     "--subjects", "S9", "--out", tmp_path / "ev") == 0
    assert _eval_cli("--checkpoint", ck, "--gt", h36m["gt"], "--keypoints", h36m["kp"],
                     "--subjects", "S9", "--out", tmp_path / "ev2") == 0
    assert (json.loads((tmp_path / "ev" / "protocol.json").read_text())
            == json.loads((tmp_path / "ev2" / "protocol.json").read_text()))
    assert train_cli.main(_train_args(h36m, tmp_path / "ft", "--init", "videopose3d-h36m-cpn",
                                      "--set", "epochs=1")) == 0
    rec = json.loads((tmp_path / "ft" / "summary.json").read_text())["init"]
    assert rec["path"] == str(ck.resolve()) and rec["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()


def test_evaluate_precision_switch_is_recorded_and_close(h36m, tmp_path) -> None:
    ck = _bin(tmp_path / "released.bin")
    common = ["--checkpoint", ck, "--gt", h36m["gt"], "--keypoints", h36m["kp"], "--subjects", "S9"]
    p1 = {}
    for prec in ("fp32", "bf16"):
        assert _eval_cli(*common, "--out", tmp_path / prec, "--precision", prec) == 0
        extra = json.loads((tmp_path / prec / "report.json").read_text())["extra"]
        assert extra["precision"]["resolved"] == prec
        p1[prec] = json.loads((tmp_path / prec / "protocol.json").read_text())["tables"]["all"]["average"]["p1"]
    assert p1["fp32"] != p1["bf16"] and abs(p1["bf16"] - p1["fp32"]) < 0.02 * p1["fp32"]
