"""The shared pieces every console script uses: errors, runner, device, checkpoint errors."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch

from poselift.core.checkpoints import CheckpointError
from poselift.core.cli import run_guarded, run_subcommands
from poselift.core.device import resolve_device
from poselift.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_one_checkpoint_error_everywhere():
    from poselift.extract.backbones import CheckpointError as a
    from poselift.extract.estimators.hrnet import CheckpointError as b
    from poselift.lifting import CheckpointError as c
    from poselift.lifting.tcmr.interop import CheckpointError as d
    from poselift.lifting.videopose3d.interop import CheckpointFormatError as e

    assert a is b is c is d is e is CheckpointError
    # callers that caught the old classes' bases keep working
    assert issubclass(CheckpointError, (UserError,)) and issubclass(CheckpointError, ValueError)
    assert issubclass(CheckpointError, RuntimeError)


def test_domain_errors_are_user_errors():
    from poselift.datasets.cache import CacheError
    from poselift.datasets.importers.tcmr_db import TCMRImportError
    from poselift.extract.video import VideoError
    from poselift.lifting.tcmr.smpl_model import BodyModelError

    for cls in (CacheError, TCMRImportError, VideoError, BodyModelError):
        assert issubclass(cls, UserError), cls


def test_runner_turns_user_errors_into_one_line(capsys):
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--x", type=int, default=0)

    def run(a: argparse.Namespace) -> int:
        if a.x == 1:
            raise KeyError("no sequence 'S1/walk' in cache.h5")
        if a.x == 2:
            raise CheckpointError("m.pt: missing key 'w'")
        if a.x == 3:
            raise ZeroDivisionError("a bug keeps its traceback")
        return 7

    cmds = {"go": (add, run, "a command")}
    assert run_subcommands("tool", "d", cmds, ["go"]) == 7
    assert run_subcommands("tool", "d", cmds, ["go", "--x", "1"]) == 2
    err = capsys.readouterr().err
    assert err == "tool go: error: no sequence 'S1/walk' in cache.h5\n"  # no KeyError quotes
    assert run_subcommands("tool", "d", cmds, ["go", "--x", "2"]) == 2
    assert capsys.readouterr().err.strip() == "tool go: error: m.pt: missing key 'w'"
    with pytest.raises(ZeroDivisionError):
        run_subcommands("tool", "d", cmds, ["go", "--x", "3"])
    assert run_guarded("t", lambda: None) == 0


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="'cuda:1' requested but CUDA is not available"):
            resolve_device("cuda:1")


def test_import_tcmr_db_without_dataset_is_a_clear_error(capsys, tmp_path):
    from poselift.datasets.importers.cli import main

    assert main(["tcmr", "--db", str(tmp_path / "x.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poselift-import tcmr: error: --db ") and "needs --dataset (one of 3dpw, h36m" in err


def test_predictions_is_a_normal_subcommand(capsys):
    from poselift.lifting.evaluate_cli import main

    with pytest.raises(SystemExit) as e:
        main(["predictions", "--help"])
    assert e.value.code == 0 and "--by-subject" in capsys.readouterr().out
    assert main(["predictions", "/nonexistent/p.npz", "--out", "/tmp/unused"]) == 2
    assert "poselift-evaluate predictions: error:" in capsys.readouterr().err


def _relative_imports(path: Path, pkg: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_no_import_cycle_between_extract_clis():
    a = _relative_imports(ROOT / "extract" / "cli.py", "poselift.extract")
    b = _relative_imports(ROOT / "extract" / "cli_keypoints.py", "poselift.extract")
    assert not ("poselift.extract.cli_keypoints" in a and "poselift.extract.cli" in b)


def test_one_strict_loader_reports_every_problem_at_once():
    from poselift.core.checkpoints import load_strict

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["0.bias"]
    state["1.weight"] = torch.ones(5)
    state["head.w"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_strict(model, state, "m.pt")
    msg = str(info.value)
    assert msg.startswith("m.pt: missing key(s) ['0.bias']; unexpected key(s) ['head.w']; ")
    assert "shape mismatch ['1.weight' has shape (5,), model expects (2,)]" in msg
    assert "does not fit Sequential" in msg
    # a pre-0.4.1 file without num_batches_tracked loads; the model keeps its own counter
    good = {k: torch.full_like(v, 3) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    assert load_strict(model, good, "old.pt") == []
    assert torch.equal(model[0].weight, torch.full((2, 3), 3.0))
    assert int(model[1].num_batches_tracked) == 0


def test_one_unwrapper_and_refusal_types(tmp_path):
    import pickle

    from poselift.core.checkpoints import load_checkpoint, unwrap_state_dict
    from poselift.datasets.safe_pickle import UnsafePickleError

    w = torch.zeros(2)
    for obj in ({"module.a": w}, {"state_dict": {"module.a": w}}, {"model": {"a": w}}):
        assert list(unwrap_state_dict(obj, "f.pt")) == ["a"]
    with pytest.raises(CheckpointError, match=r"f\.pt: key 'a' holds int, not a tensor"):
        unwrap_state_dict({"model": {"a": 1}}, "f.pt")
    with pytest.raises(CheckpointError, match=r"f\.pt: expected a state dict .*got list"):
        unwrap_state_dict([w], "f.pt")
    # junk bytes make torch's legacy reader raise a KeyError: still one CheckpointError
    (tmp_path / "junk.pt").write_bytes(b"junkjunk")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": argparse.Namespace()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: refused") as info:
        load_checkpoint(tmp_path / "bad.pt")
    # the refusal is also the reader's own error type, for callers that caught that
    assert isinstance(info.value, UnsafePickleError) and isinstance(info.value, pickle.UnpicklingError)
