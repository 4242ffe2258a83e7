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
    junk.write_bytes(b"not a checkpoint")
    assert _eval_cli(*base[:1], junk, *base[2:], "--subjects", "S9") == 2
    assert "junk.bin" in capsys.readouterr().err
