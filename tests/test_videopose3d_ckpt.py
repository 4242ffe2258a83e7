"""VideoPose3D .bin interop: reference-format files built here, restricted unpickling."""

from __future__ import annotations

import fractions
import io
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from poselift.datasets.safe_pickle import UnsafePickleError, allowed_global_names, safe_torch_load
from poselift.lifting.videopose3d.model import TemporalModel, TemporalModelOptimized1f
from poselift.lifting.videopose3d.interop import (
    CheckpointFormatError,
    export_videopose3d,
    infer_videopose3d_arch,
    load_videopose3d,
)

torch.set_num_threads(2)


# -- reference-format fixtures --------------------------------------------------------
class _Numpy1StylePickler(pickle.Pickler):
    """Writes what numpy 1.16 wrote: numpy.core.multiarray names, __RandomState_ctor."""

    def reducer_override(self, obj):
        if type(obj) is np.random.RandomState:
            return (getattr(np.random, "__RandomState_ctor"), (), obj.get_state(legacy=True))
        return NotImplemented


class _Numpy1PickleModule:
    """``pickle_module`` for torch.save that rewrites numpy-2 global names to numpy-1.x."""

    class Pickler:
        def __init__(self, file, protocol=2):
            self._file, self._protocol = file, protocol

        def persistent_id(self, obj):  # torch's subclass overrides this
            return None

        def dump(self, obj):
            buf = io.BytesIO()
            outer = self

            class _P(_Numpy1StylePickler):
                def persistent_id(self, o):
                    return outer.persistent_id(o)

            _P(buf, protocol=self._protocol).dump(obj)
            # protocol-2 GLOBAL opcodes are plain text lines
            self._file.write(buf.getvalue().replace(b"cnumpy._core.multiarray\n",
                                                    b"cnumpy.core.multiarray\n"))

    @staticmethod
    def dump(obj, file, protocol=2, **_):
        pickle.Pickler(file, protocol=protocol).dump(obj)


def _randomize_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _model(widths, j_out=17, causal=False, dense=False, channels=16, seed=0, cls=TemporalModel):
    torch.manual_seed(seed)
    kw = {"dense": dense} if cls is TemporalModel else {}
    m = cls(17, 2, j_out, widths, causal=causal, channels=channels, **kw)
    _randomize_bn(m, seed)
    return m.eval()


def _write_run_py_bin(path, model_pos, model_traj=None, numpy1=False, legacy_torch=False,
                      extra=None):
    """A dict exactly like VideoPose3D's run.py saves (epoch_N.bin)."""
    params = list(model_pos.parameters()) + (list(model_traj.parameters()) if model_traj else [])
    opt = torch.optim.Adam(params, lr=1e-3, amsgrad=True)
    loss = sum(p.square().sum() for p in params)
    loss.backward()
    opt.step()  # non-empty optimizer state (exp_avg, max_exp_avg_sq, step)
    opt.zero_grad()
    rs = np.random.RandomState(1234)
    rs.permutation(10)  # advanced, like after an epoch
    ckpt = {
        "epoch": 10,
        "lr": 0.001 * 0.95 ** 10,
        "random_state": rs,
        "optimizer": opt.state_dict(),
        "model_pos": model_pos.state_dict(),
        "model_traj": model_traj.state_dict() if model_traj is not None else None,
        "random_state_semi": np.random.RandomState(4321) if model_traj is not None else None,
    }
    if extra:
        ckpt.update(extra)
    kwargs = {"_use_new_zipfile_serialization": not legacy_torch}
    if numpy1:
        kwargs["pickle_module"] = _Numpy1PickleModule
    torch.save(ckpt, path, **kwargs)
    return ckpt


def _assert_same_outputs(a, b, rf, j_in=17):
    x = torch.randn(2, rf + 5, j_in, 2)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-6, rtol=1e-6)


# -- loading --------------------------------------------------------------------------
@pytest.mark.parametrize("widths,causal,dense,traj,numpy1,legacy_torch", [
    ((3, 3, 3), False, False, False, False, False),      # 27 frames
    ((3, 3, 3, 3), False, False, True, True, False),     # 81 frames, semi-supervised
    ((3, 3, 7), False, False, False, True, True),        # 63 frames, torch<1.6 file
    ((3, 3, 3), True, False, True, False, False),        # causal
    ((3, 3, 3), False, True, False, True, False),        # dense
    ((3, 3, 3, 3), False, True, True, False, False),     # dense 81 + traj
    ((5, 3), True, False, False, True, True),
])
def test_load_reference_checkpoint(tmp_path, widths, causal, dense, traj, numpy1, legacy_torch):
    pos = _model(widths, causal=causal, dense=dense, seed=1)
    tr = _model(widths, j_out=1, causal=causal, dense=dense, seed=2) if traj else None
    path = tmp_path / "epoch_10.bin"
    _write_run_py_bin(path, pos, tr, numpy1=numpy1, legacy_torch=legacy_torch)
    if numpy1 and not legacy_torch:
        data = zipfile.ZipFile(path).read("epoch_10/data.pkl")
        assert b"numpy.core.multiarray\n_reconstruct" in data and b"numpy._core" not in data
        assert b"numpy.random\n__RandomState_ctor" in data
    lp, lt = load_videopose3d(path, causal=causal, dense=dense)
    assert isinstance(lp, TemporalModel) and not lp.training
    assert lp.filter_widths == list(widths) and lp.channels == 16 and lp.dense == dense
    assert lp.num_joints_in == 17 and lp.num_joints_out == 17 and lp.causal == causal
    rf = lp.receptive_field()
    _assert_same_outputs(lp, pos, rf)
    if traj:
        assert isinstance(lt, TemporalModel) and not lt.training and lt.num_joints_out == 1
        _assert_same_outputs(lt, tr, rf)
    else:
        assert lt is None


def test_load_checkpoint_of_strided_training_model(tmp_path):
    """run.py saves the Optimized1f state_dict; it must load into the full model."""
    fast = _model((3, 3, 3), causal=True, seed=5, cls=TemporalModelOptimized1f)
    path = tmp_path / "train.bin"
    _write_run_py_bin(path, fast, numpy1=True)
    full, _ = load_videopose3d(path, causal=True)
    x = torch.randn(1, 30, 17, 2)
    with torch.no_grad():
        y = full(x)
        for t in range(4):
            torch.testing.assert_close(y[:, t:t + 1], fast(x[:, t:t + 27]), atol=1e-5, rtol=1e-5)


def test_in_features_override_and_missing_num_batches_tracked(tmp_path):
    torch.manual_seed(0)
    m = TemporalModel(17, 3, 17, (3, 3), channels=8).eval()
    sd = OrderedDict((k, v) for k, v in m.state_dict().items()
                     if not k.endswith("num_batches_tracked"))  # torch 0.4.0 files
    torch.save({"model_pos": sd, "model_traj": None}, tmp_path / "a.bin")
    lp, _ = load_videopose3d(tmp_path / "a.bin", in_features=3)
    assert lp.num_joints_in == 17 and lp.in_features == 3
    x = torch.randn(1, 12, 17, 3)
    with torch.no_grad():
        torch.testing.assert_close(lp(x), m(x), atol=1e-6, rtol=1e-6)
    # read with the default F=2: 51 channels is not a multiple of 2
    with pytest.raises(CheckpointFormatError, match=r"a\.bin \[model_pos\].*expand_conv.*51"):
        load_videopose3d(tmp_path / "a.bin")


# -- malformed layouts ----------------------------------------------------------------
def _save_sd(path, sd, traj=None):
    torch.save({"epoch": 1, "model_pos": sd, "model_traj": traj}, path)
    return path


def test_even_kernel_is_refused_naming_layer(tmp_path):
    sd = _model((3, 3, 3)).state_dict()
    sd["layers_conv.2.weight"] = torch.zeros(16, 16, 4)
    with pytest.raises(CheckpointFormatError, match=r"even\.bin.*layers_conv\.2.*even kernel 4"):
        load_videopose3d(_save_sd(tmp_path / "even.bin", sd))


def test_mismatched_channels_are_refused_naming_layer(tmp_path):
    sd = _model((3, 3, 3)).state_dict()
    sd["layers_conv.3.weight"] = torch.zeros(16, 24, 1)
    with pytest.raises(CheckpointFormatError, match=r"layers_conv\.3.*\(16, 24, 1\).*C=16"):
        load_videopose3d(_save_sd(tmp_path / "ch.bin", sd))
    sd = _model((3, 3, 3)).state_dict()
    sd["layers_bn.1.running_mean"] = torch.zeros(12)
    with pytest.raises(
            CheckpointFormatError,
            match=r"'layers_bn\.1\.running_mean' has shape \(12,\)"):
        load_videopose3d(_save_sd(tmp_path / "bn.bin", sd))


def test_missing_and_leftover_keys_are_named(tmp_path):
    sd = _model((3, 3, 3)).state_dict()
    for k in [k for k in sd if k.startswith("layers_bn.3.")]:
        del sd[k]
    with pytest.raises(
            CheckpointFormatError,
            match=r"nobn\.bin \[model_pos\]: missing key.*'layers_bn\.3\.weight'"):
        load_videopose3d(_save_sd(tmp_path / "nobn.bin", sd))
    sd = _model((3, 3, 3)).state_dict()
    del sd["layers_conv.3.weight"]
    with pytest.raises(CheckpointFormatError, match=r"missing key 'layers_conv\.3\.weight'"):
        load_videopose3d(_save_sd(tmp_path / "noconv.bin", sd))
    sd = _model((3, 3, 3)).state_dict()
    sd["module.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointFormatError, match=r"unexpected key.*'module\.extra'"):
        load_videopose3d(_save_sd(tmp_path / "left.bin", sd))
    torch.save({"epoch": 1, "model_traj": None}, tmp_path / "nopos.bin")
    with pytest.raises(CheckpointFormatError, match=r"nopos\.bin: missing key 'model_pos'"):
        load_videopose3d(tmp_path / "nopos.bin")


def test_dense_and_dilated_flags_must_match_the_file(tmp_path):
    dense = _save_sd(tmp_path / "dense.bin", _model((3, 3, 3), dense=True).state_dict())
    with pytest.raises(CheckpointFormatError, match=r"dense\.bin.*\[3, 7, 19\].*dense=True"):
        load_videopose3d(dense)
    dil = _save_sd(tmp_path / "dil.bin", _model((3, 3, 3)).state_dict())
    with pytest.raises(
            CheckpointFormatError,
            match=r"dil\.bin.*layers_conv\.0 has kernel 3.*\(w - 1\) \* 3 \+ 1"):
        load_videopose3d(dil, dense=True)


def test_ambiguous_dilated_layout_needs_explicit_widths(tmp_path):
    """A dilated 3,7 net has the kernel shapes of a dense 3,3 net; filter_widths decides."""
    m = _model((3, 7))
    path = _save_sd(tmp_path / "amb.bin", m.state_dict())
    with pytest.raises(CheckpointFormatError, match="look like a dense checkpoint"):
        load_videopose3d(path)
    lp, _ = load_videopose3d(path, filter_widths=(3, 7))
    assert lp.receptive_field() == 21
    _assert_same_outputs(lp, m, 21)
    ld, _ = load_videopose3d(path, dense=True)
    assert ld.filter_widths == [3, 3] and ld.receptive_field() == 9
    with pytest.raises(
            CheckpointFormatError,
            match=r"amb\.bin.*filter_widths=\[3, 7, 3\] has 3 levels"):
        load_videopose3d(path, filter_widths=(3, 7, 3))
    with pytest.raises(
            CheckpointFormatError,
            match=r"'layers_conv\.0\.weight' has shape \(16, 16, 7\)"):
        load_videopose3d(path, filter_widths=(3, 5))


def test_trajectory_model_must_have_one_joint(tmp_path):
    path = _save_sd(tmp_path / "tr.bin", _model((3, 3)).state_dict(), _model((3, 3)).state_dict())
    with pytest.raises(
            CheckpointFormatError,
            match=r"tr\.bin \[model_traj\]: layer shrink regresses 17"):
        load_videopose3d(path)


def test_infer_arch_from_state_dict():
    arch = infer_videopose3d_arch(_model((3, 3, 7), j_out=1).state_dict())
    assert arch == {"num_joints_in": 17, "in_features": 2, "num_joints_out": 1,
                    "filter_widths": [3, 3, 7], "channels": 16, "dense": False}


# -- restricted unpickling ------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    _write_run_py_bin(path, _model((3, 3)), extra={"payload": _Evil(marker)})
    with pytest.raises(
            UnsafePickleError,
            match=r"evil\.bin: refused to unpickle global '(posix|os)\.system'"):
        load_videopose3d(path)
    assert not marker.exists()
    legacy = tmp_path / "evil_legacy.bin"
    _write_run_py_bin(legacy, _model((3, 3)), extra={"payload": _Evil(marker)}, legacy_torch=True)
    with pytest.raises(UnsafePickleError, match=r"evil_legacy\.bin.*system"):
        load_videopose3d(legacy)
    assert not marker.exists()


def test_unknown_global_needs_trust(tmp_path):
    path = tmp_path / "frac.bin"
    m = _model((3, 3))
    _write_run_py_bin(path, m, extra={"note": fractions.Fraction(1, 3)})
    with pytest.raises(UnsafePickleError, match=r"frac\.bin.*'fractions\.Fraction'.*trust"):
        load_videopose3d(path)
    lp, _ = load_videopose3d(path, trust_pickle=True)
    _assert_same_outputs(lp, m, 9)
    ck = safe_torch_load(path, extra_globals=[fractions.Fraction])
    assert ck["note"] == fractions.Fraction(1, 3)


def test_safe_torch_load_restores_numpy_objects(tmp_path):
    path = tmp_path / "np.bin"
    ckpt = _write_run_py_bin(path, _model((3, 3)), _model((3, 3), j_out=1), numpy1=True)
    ckpt["extra"] = None
    loaded = safe_torch_load(path)
    assert isinstance(loaded["random_state"], np.random.RandomState)
    expect = np.random.RandomState(1234)
    expect.permutation(10)
    np.testing.assert_array_equal(loaded["random_state"].randint(0, 10**6, 5),
                                  expect.randint(0, 10**6, 5))
    np.testing.assert_array_equal(loaded["random_state_semi"].randint(0, 10**6, 5),
                                  np.random.RandomState(4321).randint(0, 10**6, 5))
    assert loaded["optimizer"]["param_groups"][0]["amsgrad"] is True
    names = allowed_global_names()
    for n in ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
              "numpy.core.multiarray.scalar", "numpy.random.mtrand.RandomState",
              "numpy.random._pickle.__randomstate_ctor", "numpy.random.__RandomState_ctor"):
        assert n in names


# -- export ---------------------------------------------------------------------------
def test_export_round_trip(tmp_path):
    pos = _model((3, 3, 3), causal=True, seed=7)
    tr = _model((3, 3, 3), j_out=1, causal=True, seed=8)
    path = tmp_path / "export.bin"
    export_videopose3d(path, pos, tr, epoch=12, lr=5e-4)
    lp, lt = load_videopose3d(path, causal=True)
    _assert_same_outputs(lp, pos, 27)
    _assert_same_outputs(lt, tr, 27)
    # what run.py --resume reads, through plain torch.load
    ck = torch.load(path, map_location=lambda s, loc: s, weights_only=False)
    assert set(ck) == {"epoch", "lr", "random_state", "optimizer", "model_pos", "model_traj",
                       "random_state_semi"}
    assert ck["epoch"] == 12 and ck["lr"] == 5e-4
    assert list(ck["model_pos"]) == list(pos.state_dict())
    assert ck["random_state"].randint(0, 10**6) == np.random.RandomState(1234).randint(0, 10**6)
    assert ck["random_state_semi"].randint(0, 10**6) == np.random.RandomState(4321).randint(0, 10**6)
    fresh_pos = TemporalModelOptimized1f(17, 2, 17, (3, 3, 3), causal=True, channels=16)
    fresh_tr = TemporalModelOptimized1f(17, 2, 1, (3, 3, 3), causal=True, channels=16)
    opt = torch.optim.Adam(list(fresh_pos.parameters()) + list(fresh_tr.parameters()),
                           lr=0.1, amsgrad=True)
    opt.load_state_dict(ck["optimizer"])
    assert opt.param_groups[0]["lr"] == 5e-4 and opt.param_groups[0]["amsgrad"]
    fresh_pos.load_state_dict(ck["model_pos"], strict=True)
    data = zipfile.ZipFile(path).read(zipfile.ZipFile(path).namelist()[0])
    assert b"numpy._core" not in data  # readable by numpy 1.x as well
    assert not list(tmp_path.glob("*.tmp"))


def test_export_without_traj_keeps_given_optimizer(tmp_path):
    pos = _model((3, 3), seed=9)
    state = torch.optim.Adam(pos.parameters(), lr=2e-3, amsgrad=True).state_dict()
    path = tmp_path / "e.bin"
    export_videopose3d(path, pos, optimizer_state=state)
    ck = safe_torch_load(path)
    assert ck["model_traj"] is None and ck["random_state_semi"] is None
    assert ck["optimizer"]["param_groups"][0]["lr"] == 2e-3
    lp, lt = load_videopose3d(path)
    assert lt is None
    _assert_same_outputs(lp, pos, 9)
    with pytest.raises(ValueError, match="num_joints_out=17"):
        export_videopose3d(tmp_path / "bad.bin", pos, model_traj=pos)


def test_exported_file_pickle_globals_are_numpy1_names(tmp_path):
    path = tmp_path / "n.bin"
    export_videopose3d(path, _model((3, 3)))
    data = zipfile.ZipFile(path).read(zipfile.ZipFile(path).namelist()[0])
    assert b"cnumpy.random\n__RandomState_ctor\n" in data
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
    assert b"numpy.random._pickle" not in data


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_to_cuda(tmp_path):
    pos = _model((3, 3, 3), seed=3)
    path = tmp_path / "g.bin"
    _write_run_py_bin(path, pos)
    lp, _ = load_videopose3d(path, map_location="cuda")
    assert next(lp.parameters()).is_cuda
    x = torch.randn(1, 30, 17, 2)
    with torch.no_grad():
        torch.testing.assert_close(lp(x.cuda()).cpu(), pos(x), atol=1e-4, rtol=1e-4)


