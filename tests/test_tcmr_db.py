"""TCMR/VIBE DB importers: joblib DBs, InstaVariety HDF5, 3DPW sequence files (tiny files)."""
from __future__ import annotations

import gc
import os
import pickle
import threading
import time

import h5py
import joblib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from poselift.datasets.cache import Cache
from poselift.datasets.importers.insta import import_insta_h5
from poselift.datasets.importers.tcmr_db import TCMRImportError, import_tcmr_db, load_db
from poselift.datasets.importers.threedpw import import_3dpw_sequences
from poselift.synthetic.tcmr import write_3dpw_db, write_insta_h5


def _db(n_per=(12, 9), j2=14, j3=49, d=8, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(n_per)
    names = np.concatenate([[f"v{i}_0"] * k for i, k in enumerate(n_per)])
    return {"vid_name": names, "frame_id": np.concatenate([np.arange(k) for k in n_per]),
            "joints2D": rng.random((n, j2, 3)), "joints3D": rng.random((n, j3, 3)).astype(np.float32),
            "pose": rng.random((n, 72)).astype(np.float32), "shape": rng.random((n, 10)).astype(np.float32),
            "bbox": rng.random((n, 4)) * 100, "features": rng.normal(size=(n, d)).astype(np.float32),
            "valid": (rng.random(n) > 0.2).astype(np.float64)}


def test_3dpw_db_arrays_round_trip(tmp_path):
    db = _db()
    joblib.dump(db, tmp_path / "3dpw_train_db.pt")
    s = import_tcmr_db(tmp_path / "3dpw_train_db.pt", "3dpw", tmp_path / "out", features_dtype="float32")
    assert (s.sequences, s.frames) == (2, 21)
    gt = Cache(tmp_path / "out" / "3dpw_train_gt.h5", kind="gt", dataset="3dpw")
    ft = Cache(tmp_path / "out" / "3dpw_train_features.h5", kind="features")
    assert gt.ids == ["v0_0", "v1_0"] and gt.header.joint_set is None
    assert gt.header.extra["layouts"] == {"keypoints": "lsp14", "joints_3d": "spin49"}
    a, b = 12, 21
    np.testing.assert_array_equal(gt.read("v1_0", "keypoints"), db["joints2D"][a:b, :, :2].astype(np.float32))
    np.testing.assert_array_equal(gt.read("v1_0", "scores"), db["joints2D"][a:b, :, 2].astype(np.float32))
    np.testing.assert_array_equal(gt.read("v1_0", "joints_3d"), db["joints3D"][a:b])
    np.testing.assert_array_equal(gt.read("v1_0", "smpl_pose"), db["pose"][a:b])
    np.testing.assert_array_equal(gt.read("v1_0", "smpl_shape"), db["shape"][a:b])
    np.testing.assert_array_equal(gt.read("v1_0", "bbox_cxcywh"), db["bbox"][a:b].astype(np.float32))
    np.testing.assert_array_equal(gt.read("v1_0", "valid"), db["valid"][a:b] > 0)
    np.testing.assert_array_equal(ft.read("v1_0", "features"), db["features"][a:b])
    np.testing.assert_array_equal(ft.read("v0_0", "frame_index"), np.arange(12))
    # default float16 features; the importer resumes (skips) already written videos
    s2 = import_tcmr_db(tmp_path / "3dpw_train_db.pt", "3dpw", tmp_path / "o16")
    f16 = Cache(tmp_path / "o16" / "3dpw_train_features.h5").read("v0_0", "features")
    assert f16.dtype == np.float16 and s2.skipped == 0
    np.testing.assert_allclose(f16, db["features"][:12], rtol=1e-3, atol=1e-3)
    assert import_tcmr_db(tmp_path / "3dpw_train_db.pt", "3dpw", tmp_path / "o16").skipped == 2


def test_noncontiguous_videos_error_or_split(tmp_path):
    db = _db(n_per=(5, 4))
    db["vid_name"] = np.array(["a"] * 3 + ["b"] * 4 + ["a"] * 2)
    joblib.dump(db, tmp_path / "x_db.pt")
    with pytest.raises(TCMRImportError, match=r"x_db.pt.*'vid_name'.*'a' is not contiguous"):
        import_tcmr_db(tmp_path / "x_db.pt", "3dpw", tmp_path / "o")
    s = import_tcmr_db(tmp_path / "x_db.pt", "3dpw", tmp_path / "o2", noncontiguous="split")
    assert Cache(s.caches["labels"]).ids == ["a", "a#1", "b"]


def test_h36m_zero_smpl_mpi_string_ids_and_2d_only(tmp_path):
    h = _db(j2=49, j3=49)
    h["pose"][:] = 0
    h["shape"][:] = 0
    del h["valid"]
    joblib.dump(h, tmp_path / "h36m_train_db.pt")
    s = import_tcmr_db(tmp_path / "h36m_train_db.pt", "h36m", tmp_path / "o")
    gt = Cache(s.caches["labels"])
    assert gt.header.joint_set == "spin49" and gt.header.extra["smpl"] is False
    assert "smpl_pose" not in gt.info("v0_0").fields and "valid" not in gt.info("v0_0").fields
    m = _db(j2=49, j3=49)
    m["frame_id"] = np.array([f"frame_{i:06d}.jpg" for i in [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13]]
                             + [f"frame_{i:06d}.jpg" for i in range(9)])
    m["joints2D"], m["joints3D"] = m["joints2D"].astype(np.float64), m["joints3D"].astype(np.float64)
    m["valid_i"] = m.pop("valid")[:, None]
    del m["pose"], m["shape"]
    joblib.dump(m, tmp_path / "mpii3d_val_db.pt")
    s = import_tcmr_db(tmp_path / "mpii3d_val_db.pt", "mpii3d", tmp_path / "o")
    gt = Cache(s.caches["labels"])
    np.testing.assert_array_equal(gt.read("v0_0", "frame_index")[:5], [0, 1, 2, 5, 6])
    assert gt.read("v0_0", "joints_3d").dtype == np.float64
    np.testing.assert_array_equal(gt.read("v0_0", "valid"), m["valid_i"][:12, 0] > 0)
    p = _db(j2=49)
    for k in ("joints3D", "pose", "shape", "valid"):
        del p[k]
    joblib.dump(p, tmp_path / "pennaction_train_db.pt")
    s = import_tcmr_db(tmp_path / "pennaction_train_db.pt", "pennaction", tmp_path / "o")
    assert Cache(s.caches["labels"]).header.kind == "keypoints2d"
    bad = _db(j2=17)
    joblib.dump(bad, tmp_path / "3dpw_test_db.pt")
    with pytest.raises(TCMRImportError, match=r"3dpw_test_db.pt: key 'joints2D' has 17 joints.*lsp14"):
        import_tcmr_db(tmp_path / "3dpw_test_db.pt", "3dpw", tmp_path / "o")
    missing = _db()
    del missing["features"]
    joblib.dump(missing, tmp_path / "3dpw_val_db.pt")
    with pytest.raises(TCMRImportError, match=r"3dpw_val_db.pt: missing key 'features'"):
        import_tcmr_db(tmp_path / "3dpw_val_db.pt", "3dpw", tmp_path / "o")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_hostile_db_pickles_are_refused(tmp_path):
    db = _db()
    db["extra"] = _Evil()
    joblib.dump(db, tmp_path / "evil_db.pt")
    with pytest.raises(TCMRImportError, match=r"evil_db.pt: refused to unpickle global '(posix|os).system'"):
        load_db(tmp_path / "evil_db.pt")
    db = _db()
    db["names"] = np.array(["a", 1], dtype=object)
    joblib.dump(db, tmp_path / "obj_db.pt")
    with pytest.raises(TCMRImportError, match="obj_db.pt: refused an object-dtype array"):
        load_db(tmp_path / "obj_db.pt")
    assert load_db(tmp_path / "obj_db.pt", trust=True)["names"].dtype == object
    arrays = load_db(tmp_path / "obj_db.pt", trust=True)
    assert isinstance(arrays["features"], np.memmap)


def test_insta_h5_import(tmp_path):
    p = write_insta_h5(tmp_path / "insta_train_db.h5", lengths=[7, 5], feat_dim=6)
    s = import_insta_h5(p, tmp_path / "o", features_dtype="float32")
    kp = Cache(s.caches["labels"], kind="keypoints2d", joint_set="insta25")
    assert kp.ids == ["tfrecord_seq00_0", "tfrecord_seq01_0"]
    assert kp.header.extra["keypoints_frame"] == "crop224"
    with h5py.File(p) as f:
        np.testing.assert_array_equal(kp.read("tfrecord_seq01_0", "keypoints"),
                                      f["joints2D"][7:, :, :2].astype(np.float32))
        np.testing.assert_array_equal(Cache(s.caches["features"]).read("tfrecord_seq00_0", "features"),
                                      f["features"][:7])


def _seqfile(t=5, seed=0):
    rng = np.random.default_rng(seed)
    cam = np.tile(np.eye(4), (t, 1, 1))
    cam[:, :3, :3] = Rotation.from_rotvec([0.1, 0.4, -0.2]).as_matrix()
    cam[:, :3, 3] = [0.2, -0.1, 3.0]
    return {"sequence": "courtyard_x_00", "genders": ["f", "m"],
            "betas": [rng.random(10), rng.random(300)],
            "poses": [rng.random((t, 72)) for _ in range(2)],
            "trans": [rng.random((t, 3)) for _ in range(2)],
            "jointPositions": [rng.random((t, 72)) for _ in range(2)],
            "poses2d": [rng.random((t, 3, 18)) * 500 for _ in range(2)],
            "campose_valid": [np.array([1, 1, 0, 1, 1], bool) for _ in range(2)],
            "cam_poses": cam, "cam_intrinsics": np.eye(3), "img_frame_ids": np.arange(t)}


def test_3dpw_sequence_files(tmp_path):
    d = tmp_path / "sequenceFiles" / "test"
    d.mkdir(parents=True)
    seq = _seqfile()
    with open(d / "courtyard_x_00.pkl", "wb") as fh:
        pickle.dump(seq, fh, protocol=2)  # protocol 2 as Python 2 wrote (bytes via _codecs)
    s = import_3dpw_sequences(tmp_path, "test", tmp_path / "gt.h5")
    gt = Cache(tmp_path / "gt.h5", kind="gt")
    assert gt.ids == ["courtyard_x_00_0", "courtyard_x_00_1"] and s.frames == 10
    r = seq["cam_poses"][0, :3, :3]
    jw = seq["jointPositions"][1].reshape(5, 24, 3)
    np.testing.assert_allclose(gt.read("courtyard_x_00_1", "joints_3d"),
                               jw @ r.T + [0.2, -0.1, 3.0], atol=1e-5)
    root = (Rotation.from_matrix(r) * Rotation.from_rotvec(seq["poses"][1][:, :3])).as_matrix()
    got = Rotation.from_rotvec(gt.read("courtyard_x_00_1", "smpl_pose")[:, :3]).as_matrix()
    np.testing.assert_allclose(got, root, atol=1e-5)
    np.testing.assert_allclose(gt.read("courtyard_x_00_1", "smpl_shape")[0], seq["betas"][1][:10], atol=1e-6)
    np.testing.assert_allclose(gt.read("courtyard_x_00_0", "keypoints")[2, 4],
                               seq["poses2d"][0][2, :2, 4], rtol=1e-6)
    np.testing.assert_array_equal(gt.read("courtyard_x_00_0", "valid"), [1, 1, 0, 1, 1])
    assert gt.info("courtyard_x_00_0").attrs["gender"] == "f"
    seq["evil"] = _Evil()
    with open(d / "zz_evil.pkl", "wb") as fh:
        pickle.dump(seq, fh, protocol=2)
    with pytest.raises(TCMRImportError, match=r"zz_evil.pkl.*(posix|os)\.system"):
        import_3dpw_sequences(tmp_path, "test", tmp_path / "gt2.h5")


def _rss_anon_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def test_import_memory_stays_well_below_db_size(tmp_path):
    """A ~200 MB DB: private resident memory grows by far less than the file (memory-mapped,
    one video at a time). File-backed page-cache pages are not private and do not count."""
    p = write_3dpw_db(tmp_path / "big_db.pt", lengths=[2500] * 10, feat_dim=2048, joints3d=14)
    size_mb = p.stat().st_size / 2**20
    assert size_mb > 190
    gc.collect()
    base, peak, stop = _rss_anon_kb(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon_kb())
            time.sleep(0.002)

    th = threading.Thread(target=watch)
    th.start()
    try:
        import_tcmr_db(p, "3dpw", tmp_path / "o")
    finally:
        stop.set()
        th.join()
    growth_mb = (peak[0] - base) / 1024
    print(f"import of {size_mb:.0f} MB DB: private memory +{growth_mb:.1f} MB")
    assert growth_mb < 0.3 * size_mb, f"private memory grew {growth_mb:.0f} MB for a {size_mb:.0f} MB DB"
