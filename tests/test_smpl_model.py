"""SMPL loading without chumpy, the restricted unpickler, the synthetic model, SPINSMPL."""
from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from poselift.datasets.joints import SPIN49
from poselift.lifting.tcmr.smpl_model import (
    SMPL_KEYS, SPIN_JOINT_MAP, BodyModelError, SPINSMPL, build_spin_smpl,
    convert_smpl_pkl_to_npz, find_body_model_file, load_body_model_arrays, load_mean_params)
from poselift.synthetic.smpl import make_synthetic_smpl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_synthetic_smpl(tmp_path_factory.mktemp("smpl"))


@pytest.fixture(scope="module")
def arrays(model_dir):
    return load_body_model_arrays(model_dir / "SMPL_NEUTRAL.pkl")


def test_synthetic_files_have_official_layout(model_dir, arrays):
    shapes = {k: arrays[k].shape for k in SMPL_KEYS}
    assert shapes == {"v_template": (6890, 3), "shapedirs": (6890, 3, 10),
                      "posedirs": (6890, 3, 207), "J_regressor": (24, 6890),
                      "weights": (6890, 24), "kintree_table": (2, 24), "f": (13776, 3)}
    assert arrays["f"].min() >= 0 and arrays["f"].max() < 6890
    np.testing.assert_allclose(arrays["weights"].sum(1), 1.0)
    for name, rows in (("J_regressor_extra.npy", 9), ("J_regressor_h36m.npy", 17)):
        reg = np.load(model_dir / name)
        assert reg.shape == (rows, 6890) and reg.min() >= 0
        np.testing.assert_allclose(reg.sum(1), 1.0, rtol=1e-12)  # convex combinations
    np.testing.assert_allclose(arrays["J_regressor"].sum(1), 1.0)
    mean = np.load(model_dir / "smpl_mean_params.npz")
    assert mean["pose"].dtype == np.float32 and mean["cam"].dtype == np.float32
    np.testing.assert_array_equal(mean["pose"].reshape(24, 6), [[1, 0, 0, 1, 0, 0]] * 24)
    params = load_mean_params(model_dir)
    assert params["pose"].shape == (1, 144) and params["shape"].dtype == torch.float32
    # plausible body: ~1.7 m tall, hips below shoulders
    assert 1.5 < float(np.ptp(arrays["v_template"][:, 1])) < 2.0


def test_pkl_and_converted_npz_are_identical(model_dir, arrays, tmp_path):
    dst = convert_smpl_pkl_to_npz(model_dir / "SMPL_NEUTRAL.pkl", tmp_path / "SMPL_NEUTRAL.npz")
    back = load_body_model_arrays(dst)
    for k in SMPL_KEYS:
        np.testing.assert_array_equal(back[k], arrays[k])
    assert find_body_model_file(tmp_path) == dst  # npz preferred over pkl


def _write_chumpy_pickle(path, arrays, protocol=2):
    """Pickle like the official files: chumpy.ch.Ch objects (state dict with 'x' and a set)
    and a scipy CSC J_regressor, protocol 2. A throw-away 'chumpy' module makes pickle
    record the real global names; it is removed before loading."""
    ch_mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = {"x"}
            self._itr = None
            self._depends_on_deps = {}

        def __getstate__(self):
            return dict(self.__dict__)

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch_mod.Ch = Ch
    pkg = types.ModuleType("chumpy")
    pkg.ch = ch_mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, ch_mod
    try:
        data = {k: Ch(arrays[k]) for k in ("v_template", "shapedirs", "posedirs", "weights")}
        data.update(J_regressor=sp.csc_matrix(arrays["J_regressor"]),
                    kintree_table=arrays["kintree_table"], f=arrays["f"].astype(np.uint32),
                    bs_style="lbs", J=Ch(arrays["J_regressor"] @ arrays["v_template"]))
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=protocol)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    assert b"chumpy.ch" in path.read_bytes()


@pytest.mark.parametrize("protocol", [0, 2])  # 0 goes through copyreg._reconstructor
def test_chumpy_pickle_loads_without_chumpy(arrays, tmp_path, protocol):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    _write_chumpy_pickle(path, arrays, protocol)
    assert "chumpy" not in sys.modules
    back = load_body_model_arrays(path)
    for k in SMPL_KEYS:
        np.testing.assert_array_equal(back[k], arrays[k])
    assert "chumpy" not in sys.modules


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_refuses_foreign_globals(arrays, tmp_path):
    path = tmp_path / "SMPL_EVIL.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"v_template": _Evil()}, fh, protocol=2)
    with pytest.raises(BodyModelError) as err:
        load_body_model_arrays(path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    # a chumpy class other than the plain array container is refused by name
    bad = tmp_path / "SMPL_SELECT.pkl"
    bad.write_bytes(b"\x80\x02cchumpy.reordering\nSelect\nq\x00.")
    with pytest.raises(BodyModelError, match=r"chumpy\.reordering\.Select"):
        load_body_model_arrays(bad)


def test_missing_key_and_missing_files_are_named(arrays, tmp_path):
    partial = {k: v for k, v in arrays.items() if k != "weights"}
    np.savez(tmp_path / "SMPL_NEUTRAL.npz", **partial)
    with pytest.raises(BodyModelError, match=r"SMPL_NEUTRAL\.npz: missing key 'weights'"):
        load_body_model_arrays(tmp_path / "SMPL_NEUTRAL.npz")
    bad = dict(arrays, posedirs=arrays["posedirs"][:, :, :100])
    np.savez(tmp_path / "SMPL_BAD.npz", **bad)
    with pytest.raises(BodyModelError, match="posedirs"):
        load_body_model_arrays(tmp_path / "SMPL_BAD.npz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"SMPL_NEUTRAL\.pkl.*missing in .*empty"):
        build_spin_smpl(empty)
    np.savez(empty / "SMPL_NEUTRAL.npz", **arrays)
    with pytest.raises(FileNotFoundError, match=r"J_regressor_extra\.npy missing in .*empty"):
        build_spin_smpl(empty)


def test_spin_smpl_joints_follow_the_spin_map(model_dir, arrays):
    smpl = build_spin_smpl(model_dir)
    assert len(SPIN_JOINT_MAP) == SPIN49.num_joints == 49
    rot = torch.eye(3).expand(2, 24, 3, 3).contiguous()
    verts, joints = smpl(torch.zeros(2, 10), rot)
    v0 = torch.tensor(arrays["v_template"], dtype=torch.float32)
    torch.testing.assert_close(verts[0], v0, atol=1e-6, rtol=0)
    j24 = torch.tensor(arrays["J_regressor"], dtype=torch.float32) @ v0
    extra = torch.tensor(np.load(model_dir / "J_regressor_extra.npy"), dtype=torch.float32) @ v0
    torch.testing.assert_close(joints[0, SPIN49.index("op_mid_hip")], j24[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(joints[0, SPIN49.index("r_knee")], j24[5], atol=1e-5, rtol=0)
    torch.testing.assert_close(joints[0, SPIN49.index("r_hip")], extra[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(joints[0, SPIN49.index("head_h36m")], extra[8], atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(joints[0, SPIN49.index("nose")], v0[332], atol=1e-6, rtol=0)
    # left is +x in SMPL: LSP left hip right of the right hip
    assert joints[0, SPIN49.index("l_hip"), 0] > 0 > joints[0, SPIN49.index("r_hip"), 0]


def test_spin_smpl_matches_smplx_reading_the_pickle(model_dir):
    import smplx
    ref = smplx.SMPL(str(model_dir), create_transl=False)  # smplx reads our pickle itself
    smpl = build_spin_smpl(model_dir)
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(3, 72, generator=g) * 0.3
    betas = torch.randn(3, 10, generator=g)
    out = ref(betas=betas, global_orient=pose[:, :3], body_pose=pose[:, 3:])
    from smplx.lbs import batch_rodrigues
    rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(3, 24, 3, 3)
    verts, joints = smpl(betas, rot)
    torch.testing.assert_close(verts, out.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(joints[:, 8], out.joints[:, 0], atol=1e-5, rtol=0)
    assert isinstance(smpl, SPINSMPL) and "J_regressor_extra" in smpl.state_dict()
    assert "joint_map" not in smpl.state_dict()
