"""Allow-list audit of the restricted unpicklers: one crafted pickle per refused family of
globals (file creation, truncation through numpy.memmap, import, exec/eval, attribute access,
codec lookup), for plain pickles, TCMR joblib databases and torch checkpoints. Each refusal
is one line naming the file and the global, and nothing happens on disk."""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pytest
import torch

from poselift.datasets.importers.tcmr_db import TCMRImportError, load_db
from poselift.datasets.safe_pickle import UnsafePickleError, safe_pickle_load, safe_torch_load
from poselift.lifting.checkpoint import CheckpointError, load_checkpoint


class _Reduce:
    """Pickles as ``fn(*args)``: what a crafted file does on load."""

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return (self.fn, self.args)


def _families(tmp: Path) -> dict[str, tuple[_Reduce, str]]:
    """family -> (payload, refused global as the message spells it)."""
    victim, created = str(tmp / "victim.bin"), str(tmp / "created.txt")
    return {
        "create-open": (_Reduce(builtins.open, (created, "w")), ".open'"),
        "truncate-memmap": (_Reduce(np.memmap, (victim, "uint8", "w+", 0, (4,))), "memmap"),
        "np-load": (_Reduce(np.load, (victim,)), "load"),
        "import": (_Reduce(importlib.import_module, ("this",)), "import_module"),
        "dunder-import": (_Reduce(builtins.__import__, ("this",)), "__import__"),
        "eval": (_Reduce(builtins.eval, (f"open({created!r}, 'w')",)), "eval'"),
        "exec": (_Reduce(builtins.exec, (f"open({created!r}, 'w')",)), "exec'"),
        "os-system": (_Reduce(os.system, (f"touch {created}",)), "system"),
        "subprocess": (_Reduce(subprocess.call, (["touch", created],)), "call"),
        "getattr": (_Reduce(getattr, ("abc", "upper")), "getattr"),
    }


def _victim(tmp: Path) -> Path:
    v = tmp / "victim.bin"
    v.write_bytes(b"precious data, must survive")
    return v


def _assert_untouched(tmp: Path) -> None:
    assert (tmp / "victim.bin").read_bytes() == b"precious data, must survive"
    assert not (tmp / "created.txt").exists()


@pytest.mark.parametrize("family", list(_families(Path("/x"))))
def test_plain_pickle_refuses_each_family(tmp_path: Path, family: str) -> None:
    _victim(tmp_path)
    payload, name = _families(tmp_path)[family]
    path = tmp_path / f"{family}.pkl"
    path.write_bytes(pickle.dumps({"x": payload}, protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        safe_pickle_load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and name in msg
    _assert_untouched(tmp_path)


@pytest.mark.parametrize("family", list(_families(Path("/x"))))
def test_tcmr_db_refuses_each_family(tmp_path: Path, family: str) -> None:
    _victim(tmp_path)
    payload, name = _families(tmp_path)[family]
    path = tmp_path / f"{family}_db.pt"
    joblib.dump({"vid_name": np.array(["a"]), "x": payload}, path)
    with pytest.raises(TCMRImportError) as err:
        load_db(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and name in msg
    _assert_untouched(tmp_path)


@pytest.mark.parametrize("family", ["create-open", "truncate-memmap", "os-system", "eval"])
def test_torch_loaders_refuse_in_one_line(tmp_path: Path, family: str) -> None:
    _victim(tmp_path)
    payload, name = _families(tmp_path)[family]
    path = tmp_path / f"{family}.pt"
    torch.save({"format": "poselift-lifter", "x": payload}, path)
    for load, exc in ((safe_torch_load, UnsafePickleError), (load_checkpoint, CheckpointError)):
        with pytest.raises(exc) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and name in msg, msg
        assert "weights_only" not in msg  # not torch's paragraph suggesting weights_only=False
    _assert_untouched(tmp_path)


def test_codec_lookup_other_than_latin1_is_refused(tmp_path: Path) -> None:
    # protocol 2 stores bytes as _codecs.encode(str, 'latin1'); any other codec name makes
    # the codec registry import encodings.<name>, so only latin-1 is accepted
    crafted = (b"\x80\x02c_codecs\nencode\nq\x00X\x02\x00\x00\x00hiq\x01X\x04\x00\x00\x00"
               b"idnaq\x02\x86q\x03Rq\x04.")
    path = tmp_path / "codec.pkl"
    path.write_bytes(crafted)
    with pytest.raises(UnsafePickleError, match=r"codec\.pkl.*_codecs\.encode.*'idna'"):
        safe_pickle_load(path)
    ok = tmp_path / "bytes.pkl"
    ok.write_bytes(pickle.dumps({"b": b"\x00\xffraw"}, protocol=2))
    assert safe_pickle_load(ok) == {"b": b"\x00\xffraw"}


def test_real_joblib_databases_still_load_memory_mapped(tmp_path: Path) -> None:
    # joblib's own wrapper (including one recording a numpy.memmap subclass) still works
    src = np.lib.format.open_memmap(tmp_path / "src.npy", mode="w+", dtype=np.float32, shape=(5, 3))
    src[:] = np.arange(15, dtype=np.float32).reshape(5, 3)
    db = {"vid_name": np.array(["a"] * 5), "features": np.arange(10.0).reshape(5, 2),
          "from_memmap": src, "bytes": b"\x01\x02"}
    path = tmp_path / "ok_db.pt"
    joblib.dump(db, path)
    out = load_db(path)
    assert isinstance(out["features"], np.memmap) and out["features"].mode == "r"
    np.testing.assert_array_equal(out["features"], db["features"])
    np.testing.assert_array_equal(out["from_memmap"], np.arange(15).reshape(5, 3))
    assert out["bytes"] == b"\x01\x02" and list(out["vid_name"]) == ["a"] * 5
    assert load_db(path, mmap=False)["features"].sum() == 45.0
    # compressed (not memory-mappable) and protocol-2 dumps (bytes through _codecs.encode latin-1)
    for kw in ({"compress": 3}, {"protocol": 2}):
        other = tmp_path / f"db_{next(iter(kw))}.pt"
        joblib.dump(db, other, **kw)
        got = load_db(other, mmap="compress" not in kw)  # compressed dumps cannot be mapped
        np.testing.assert_array_equal(got["features"], db["features"])
        assert got["bytes"] == b"\x01\x02"


def _readers() -> dict[str, Callable[[Path], Any]]:
    from poselift.core.checkpoints import load_checkpoint as backbone_ckpt
    from poselift.extract.estimators.fastpose import read_state_dict
    from poselift.extract.estimators.hrnet import read_checkpoint
    from poselift.lifting.tcmr.interop import read_tcmr_checkpoint
    from poselift.lifting.videopose3d.interop import load_videopose3d

    return {"videopose3d": load_videopose3d, "tcmr": read_tcmr_checkpoint,
            "alphapose": read_state_dict, "hrnet": read_checkpoint, "backbone": backbone_ckpt}


@pytest.mark.parametrize("reader", ["videopose3d", "tcmr", "alphapose", "hrnet", "backbone"])
def test_reference_checkpoint_loaders_refuse_in_one_line(tmp_path: Path, reader: str) -> None:
    _victim(tmp_path)
    path = tmp_path / f"{reader}.pth"
    torch.save({"model_pos": {}, "gen_state_dict": {}, "x": _families(tmp_path)["os-system"][0]}, path)
    with pytest.raises(Exception) as err:
        _readers()[reader](path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "system" in msg and "weights_only" not in msg, msg
    _assert_untouched(tmp_path)
