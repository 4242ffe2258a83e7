"""Bad-input corpus (tests/bad_inputs/make_corpus.py, generated here at runtime): every loader
refuses broken files with an error that names the file and what is wrong, refuses pickles that
run code, and nothing already written is lost when a bad input turns up mid-run."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.datasets.cache import (Cache, CacheError, CacheHeader, CacheMismatchError, CacheWriter)
from poselift.datasets.cache.verify import verify_cache
from poselift.extract.backbones import CheckpointError, load_checkpoint, resnet
from poselift.extract.boxes import BoxError, load_coco_detections
from poselift.extract.contracts import PreprocessContract
from poselift.extract.estimators.fastpose import load_alphapose
from poselift.extract.features import SequenceSpec, extract_features
from poselift.extract.video import CorruptVideoError, VideoError, VideoSource
from poselift.lifting.videopose3d.data import LiftData
from poselift.synthetic.smpl import make_synthetic_smpl
from poselift.lifting.tcmr.interop import load_tcmr
from poselift.lifting.videopose3d.interop import load_videopose3d

_spec = importlib.util.spec_from_file_location(
    "make_corpus", Path(__file__).with_name("bad_inputs") / "make_corpus.py")
corpus_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus_mod)
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return corpus_mod.make_corpus(tmp_path_factory.mktemp("bad_inputs"))


def _raises(exc, path: Path, what: str):
    """pytest.raises whose message must name ``path`` and match ``what``."""
    return pytest.raises(exc, match=re.escape(str(path)) + r".*" + what)


# -- videos ------------------------------------------------------------------------------------
def test_videos(bad):
    with _raises(VideoError, bad["empty_video"], "empty \\(zero-byte\\)"):
        VideoSource(bad["empty_video"])
    with _raises(VideoError, bad["truncated_video"], "cannot open this video.*truncated"):
        VideoSource(bad["truncated_video"])
    with _raises(VideoError, bad["not_a_video"], "cannot open this video"):
        VideoSource(bad["not_a_video"])
    src = VideoSource(bad["undecodable_frames"])
    assert src.num_frames == 12
    with _raises(CorruptVideoError, bad["undecodable_frames"], r"frame \d+ failed to decode"):
        list(src.frames())


def test_extraction_keeps_good_sequences_and_names_bad_videos(bad, tmp_path):
    torch.manual_seed(0)
    model = resnet(18, base_width=4)
    boxes = np.tile(np.array([[4, 4, 30, 36]], np.float32), (12, 1))
    specs = [SequenceSpec("good", bad["good_video"], boxes),
             SequenceSpec("trunc", bad["truncated_video"], boxes),
             SequenceSpec("undecodable", bad["undecodable_frames"], boxes),
             SequenceSpec("empty", bad["empty_video"], boxes)]
    out = tmp_path / "f.h5"
    res = extract_features(specs, out, model, PreprocessContract(crop_size=32), batch_size=4,
                           weights_sha256="random-init:seed=0", progress=False)
    assert res.written == ["good"] and sorted(res.failed) == ["empty", "trunc", "undecodable"]
    assert str(bad["undecodable_frames"]) in res.failed["undecodable"]
    assert "failed to decode" in res.failed["undecodable"]
    assert "zero-byte" in res.failed["empty"] and str(bad["empty_video"]) in res.failed["empty"]
    c = Cache(out)
    assert c.ids == ["good"] and c.info("good").n_frames == 12 and verify_cache(out).ok


# -- caches ------------------------------------------------------------------------------------
def test_corrupt_caches(bad):
    with _raises(CacheError, bad["truncated_cache"], "not a readable HDF5 file.*truncated"):
        Cache(bad["truncated_cache"])
    with _raises(CacheError, bad["missing_dataset"], "sequence 'S1/walk' has no field 'keypoints'"):
        Cache(bad["missing_dataset"]).read("S1/walk", "keypoints")
    v = verify_cache(bad["missing_dataset"])
    assert any("'S1/walk': required field 'keypoints' is missing" in p for p in v.problems)
    v = verify_cache(bad["wrong_dtype"])
    assert any(str(bad["wrong_dtype"]) in p and "'S1/run', field 'keypoints': dtype float64 not allowed"
               in p for p in v.problems)
    v = verify_cache(bad["nan_in_file"])
    assert any("field 'keypoints': 1 NaN/inf values in frames [3]" in p for p in v.problems)
    with _raises(CacheMismatchError, bad["schema_v2"], "schema version 2, this poselift reads version 1"):
        Cache(bad["schema_v2"])
    with _raises(CacheMismatchError, bad["foreign_h5"], "not a poselift cache"):
        Cache(bad["foreign_h5"])
    with _raises(CacheMismatchError, bad["good_cache"], "content_fingerprint: file has '.*', expected 'abc'"):
        Cache(bad["good_cache"], content_fingerprint="abc")
    with _raises(CacheMismatchError, bad["good_cache"], "joint_set: file has 'h36m17', expected 'coco17'"):
        Cache(bad["good_cache"], joint_set="coco17")
    assert verify_cache(bad["good_cache"]).ok  # the corpus' source file itself is fine


def test_lifter_data_refuses_mismatched_joint_layout(bad, tmp_path):
    gt = tmp_path / "gt.h5"
    with CacheWriter(gt, CacheHeader(kind="gt", dataset="bad", joint_set="coco17")) as w:
        w.write_sequence("S1/walk", {"joints_3d": np.zeros((12, 17, 3), np.float32)})
    with _raises(CacheMismatchError, bad["good_cache"], "joint_set: file has 'h36m17', expected 'coco17'"):
        LiftData.open(str(gt), str(bad["good_cache"]), ["S1"], joints_in="coco17")


def test_writer_rejects_nan_and_wrong_joints_without_losing_committed(tmp_path):
    out = tmp_path / "w.h5"
    hdr = CacheHeader(kind="keypoints2d", dataset="bad", joint_set="h36m17")
    ok = np.ones((8, 17, 2), np.float32)
    w = CacheWriter(out, hdr)
    w.write_sequence("a", {"keypoints": ok})
    nan = ok.copy()
    nan[5, 0, 1] = np.inf
    with _raises(CacheError, out, r"sequence 'b', field 'keypoints': 1 NaN/inf values in frames \[5\]"):
        w.write_sequence("b", {"keypoints": nan})
    with _raises(CacheError, out, "sequence 'c', field 'keypoints': 16 joints, but the cache's joint "
                                  "set has 17"):
        w.write_sequence("c", {"keypoints": np.ones((8, 16, 2), np.float32)})
    feats = CacheWriter(tmp_path / "f.h5", CacheHeader(kind="features", dataset="bad"))
    f = np.ones((4, 8), np.float16)
    f[2, 3] = np.nan
    with _raises(CacheError, tmp_path / "f.h5", r"field 'features': 1 NaN/inf values in frames \[2\]"):
        feats.write_sequence("x", {"features": f})
    w.finalize()
    assert Cache(out).ids == ["a"] and verify_cache(out).ok  # 'a' survived both refusals


def test_detections_pointing_at_missing_frames(bad):
    with _raises(BoxError, bad["detections_missing_frames"],
                 r"entry 1 \(image_id 40\) refers to frame 40, but the video has 12 frames"):
        load_coco_detections(bad["detections_missing_frames"], 12)
    assert load_coco_detections(bad["detections_missing_frames"], 41).valid.sum() == 2


# -- checkpoints -------------------------------------------------------------------------------
def test_checkpoints_that_are_not_what_they_claim(bad, tmp_path):
    with _raises(Exception, bad["tcmr_as_vp3d_bin"], "missing key 'model_pos'.*gen_state_dict"):
        load_videopose3d(bad["tcmr_as_vp3d_bin"])
    body = make_synthetic_smpl(tmp_path / "smpl")
    with _raises(Exception, bad["vp3d_as_tcmr"], "missing key 'gen_state_dict'.*model_pos"):
        load_tcmr(bad["vp3d_as_tcmr"], body)
    with _raises(Exception, bad["zip_not_torch"], "not a readable torch"):
        load_videopose3d(bad["zip_not_torch"])
    with _raises(CheckpointError, bad["zip_not_torch"], "not a readable torch checkpoint"):
        load_checkpoint(bad["zip_not_torch"])
    with _raises(Exception, bad["tcmr_as_vp3d_bin"], "'epoch'"):
        load_alphapose(bad["tcmr_as_vp3d_bin"])


def test_pickle_that_runs_code_is_refused_by_default(bad):
    evil, marker = bad["pickle_runs_code"], bad["pickle_marker"]
    with _raises(Exception, evil, "refused to unpickle global 'posix.system'"):
        load_videopose3d(evil)
    with _raises(CheckpointError, evil, "refused to unpickle global 'posix.system'"):
        load_checkpoint(evil)
    with _raises(Exception, evil, "refused to unpickle"):
        load_alphapose(evil)
    body_dir = evil.parent  # load_tcmr must refuse before it ever needs the body model
    with _raises(Exception, evil, "refused to unpickle"):
        load_tcmr(evil, body_dir)
    assert not marker.exists(), "the pickle's code ran"


def test_corpus_script_lists_every_case(bad):
    assert {"empty_video", "truncated_video", "undecodable_frames", "truncated_cache", "missing_dataset",
            "wrong_dtype", "nan_in_file", "schema_v2", "detections_missing_frames", "tcmr_as_vp3d_bin",
            "vp3d_as_tcmr", "zip_not_torch", "pickle_runs_code"} <= set(bad)
    assert all(p.exists() for k, p in bad.items() if k != "pickle_marker")
    assert json.loads(bad["detections_missing_frames"].read_text())[1]["image_id"] == 40
