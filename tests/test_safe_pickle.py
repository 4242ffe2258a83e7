"""Restricted unpickling (safe_pickle): allow-listed numpy objects only, refusals named."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from poselift.datasets.safe_pickle import UnsafePickleError, safe_pickle_load, safe_torch_load


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_object_arrays_and_garbage_are_refused(tmp_path):
    path = tmp_path / "obj.bin"
    torch.save({"model_pos": {}, "names": np.array([1, "a"], dtype=object)}, path)
    with pytest.raises(UnsafePickleError, match=r"obj\.bin.*'numpy\.dtypes\.ObjectDType'"):
        safe_torch_load(path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
            (RuntimeError, pickle.UnpicklingError),
            match=r"junk\.bin.*(corrupt|readable)"):
        safe_torch_load(junk)


def test_safe_pickle_load_plain_pickles(tmp_path):
    ok = tmp_path / "ok.pkl"
    obj = {"a": np.arange(4, dtype=np.float32), "s": np.float64(2.5), "rs": np.random.RandomState(7),
           "od": OrderedDict(x=1), "b": b"raw"}
    ok.write_bytes(pickle.dumps(obj, protocol=2))
    out = safe_pickle_load(ok)
    np.testing.assert_array_equal(out["a"], obj["a"])
    assert out["s"] == 2.5 and out["b"] == b"raw" and out["od"] == OrderedDict(x=1)
    assert out["rs"].randint(100) == np.random.RandomState(7).randint(100)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"x": _Evil(tmp_path / "m")}))
    with pytest.raises(UnsafePickleError, match=r"bad\.pkl: refused.*system"):
        safe_pickle_load(bad)
    assert not (tmp_path / "m").exists()
    # object arrays are fine in plain pickles: their items pass the same allow-list
    objarr = tmp_path / "obj.pkl"
    objarr.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    assert list(safe_pickle_load(objarr)) == [1, "a"]
    evil_items = np.empty(1, dtype=object)
    evil_items[0] = _Evil(tmp_path / "m")
    objarr.write_bytes(pickle.dumps(evil_items, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"obj\.pkl.*system"):
        safe_pickle_load(objarr)
    assert not (tmp_path / "m").exists()


def test_plain_pickle_numpy1_names_and_extra_globals(tmp_path):
    import fractions

    rs = np.random.RandomState(3)
    data = pickle.dumps({"a": np.eye(2), "f": np.float32(1.5)}, protocol=2)
    # numpy 1.x wrote these globals under numpy.core.multiarray (protocol-2 text opcodes)
    legacy = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert legacy != data and b"numpy._core" not in legacy
    path = tmp_path / "np1.pkl"
    path.write_bytes(legacy)
    out = safe_pickle_load(path)
    np.testing.assert_array_equal(out["a"], np.eye(2))
    assert out["f"] == np.float32(1.5) and out["f"].dtype == np.float32
    frac = tmp_path / "frac.pkl"
    frac.write_bytes(pickle.dumps({"x": fractions.Fraction(2, 3), "rs": rs}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"frac\.pkl.*'fractions\.Fraction'"):
        safe_pickle_load(frac)
    assert safe_pickle_load(frac, extra_globals=[fractions.Fraction])["x"] == fractions.Fraction(2, 3)
    assert safe_pickle_load(frac, trust=True)["rs"].randint(99) == np.random.RandomState(3).randint(99)
