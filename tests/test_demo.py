"""The built-in demo end to end at tiny settings: videos, features cache, lifter beats the baseline."""
from __future__ import annotations

import json

import cv2
import numpy as np

from poselift.datasets.cache import Cache
from poselift.demo.motion import MOTIONS, animate, make_body
from poselift.demo.run import run_demo


def test_procedural_motion_has_constant_bones_and_feet_on_the_floor():
    body = make_body(1.0)
    for motion in MOTIONS:
        w = animate(body, motion, 50, 25.0)
        assert w.shape == (50, 17, 3)
        thigh = np.linalg.norm(w[:, 2] - w[:, 1], axis=-1)
        np.testing.assert_allclose(thigh, body.thigh, rtol=1e-4)
        np.testing.assert_allclose(np.minimum(w[:, 3, 2], w[:, 6, 2]), 0.03, atol=1e-5)


def test_demo_pipeline_learns(tmp_path):
    res = run_demo(tmp_path, epochs=12, frames=40, channels=64, feature_step=20, progress=False)
    assert res["lifter_mpjpe_mm"] < 0.8 * res["baseline_mean_pose_mpjpe_mm"]
    assert res["test_frames"] == 5 * 2 * 40  # S3: 5 motions x 2 cameras x 40 frames
    feats = Cache(res["features"]["path"], kind="features")
    assert len(feats) == 30 and res["features"]["frames"] == 60  # frames 0 and 20 of 30 clips
    seq = feats.ids[0]
    assert feats.read(seq, "features").shape == (2, 2048)
    np.testing.assert_array_equal(feats.read(seq, "frame_index"), [0, 20])
    assert feats.header.source["weights_sha256"].startswith("random-init")
    report = json.loads(open(res["outputs"]["json"]).read())
    assert json.dumps(report)  # machine-readable
    png = cv2.imread(res["outputs"]["plot_per_joint"])
    assert png is not None and png.std() > 0
    video = cv2.VideoCapture(str(tmp_path / "data" / "videos" / "S1_Walking_cam0.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    # poselift infer on a held-out clip with the lifter just trained: one track, a full render
    z = np.load(res["outputs"]["infer_poses3d"])
    assert z["lengths"].tolist() == [40] and np.isfinite(z["joints_3d"]).all()
    render = cv2.VideoCapture(res["outputs"]["infer_video"])
    assert int(render.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    assert "<video" in open(res["outputs"]["infer_report"]).read()
