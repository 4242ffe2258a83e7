"""``poselift infer`` from pixels: YOLOX detections -> tracks -> SIKR 2D -> lift -> render, with
small randomly initialised networks whose detection head is set to give a few large boxes."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from poselift.datasets.cache import Cache
from poselift.extract import YOLOX, FastPose
from poselift.infer import InferOptions, run_infer
from poselift.lifting.videopose3d.model import TemporalModel
from poselift.lifting.videopose3d.interop import export_videopose3d


def _yolox(path: Path) -> Path:
    """Nano-width YOLOX whose stride-32 level predicts a 'person' of 4 x 5 cells at every anchor
    (NMS then keeps a few of them); the other levels predict nothing."""
    torch.manual_seed(0)
    m = YOLOX(depth=0.33, width=0.25, test_size=160).eval()
    with torch.no_grad():
        for k in range(3):
            for conv in (m.head.obj_preds[k], m.head.cls_preds[k], m.head.reg_preds[k]):
                conv.weight.zero_()
            m.head.obj_preds[k].bias.fill_(10.0 if k == 2 else -10.0)
            m.head.cls_preds[k].bias.fill_(-10.0)
            m.head.cls_preds[k].bias[0] = 10.0
            m.head.reg_preds[k].bias.copy_(torch.tensor([0.0, 0.0, math.log(4), math.log(5)]))
    torch.save({"model": m.state_dict()}, path)
    return path


def test_detect_track_2d_lift_from_pixels(tmp_path: Path) -> None:
    frames = tmp_path / "clip"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(6):
        cv2.imwrite(str(frames / f"{t:03d}.png"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    (frames / "003.png").write_bytes(b"\x89PNG truncated")  # a corrupt frame mid-clip: reported, skipped
    torch.manual_seed(0)
    torch.save(FastPose(17, layers=(1, 1, 1, 1)).state_dict(), tmp_path / "fastpose.pth")
    pos = TemporalModel(17, 2, 17, filter_widths=[3], channels=8).eval()
    export_videopose3d(tmp_path / "lifter.bin", pos)
    o = InferOptions(lifter=str(tmp_path / "lifter.bin"), detector=str(_yolox(tmp_path / "yolox.pth")),
                     detector_size=160, estimator="sikr", estimator_weights=str(tmp_path / "fastpose.pth"),
                     estimator_input_size=(64, 48),
                     device="cpu", progress=False, render_height=64, max_panels=2)
    res = run_infer([str(frames)], tmp_path / "out", o)
    det = Cache(tmp_path / "out" / "detections.h5", kind="detections")
    fi = det.read("clip", "frame_index")
    assert set(fi.tolist()) == {0, 1, 2, 4, 5}  # the same boxes in every readable frame ...
    tid = det.read("clip", "track_id")
    n = len(fi) // 5
    assert n >= 1 and len(fi) == 5 * n and len(set(tid.tolist())) == n  # ... so n tracks span the clip
    kp = Cache(tmp_path / "out" / "keypoints2d.h5", kind="keypoints2d")
    assert len(kp) == n and all(kp.info(s).n_frames == 6 for s in kp.ids)
    assert all(kp.read(s, "valid").tolist() == [True, True, True, False, True, True] for s in kp.ids)
    assert res["tracks"] == n and any("unreadable frame" in m and "[3]" in m for m in res["notes"])
    z = np.load(res["paths"]["clip:npz"])
    assert z["joints_3d"].shape == (6 * n, 17, 3) and np.isfinite(z["joints_3d"]).all()
    cap = cv2.VideoCapture(res["paths"]["clip:mp4"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    # re-running with another lifter keeps the detections and the 2D
    before = [(tmp_path / "out" / f).stat().st_mtime_ns for f in ("detections.h5", "keypoints2d.h5")]
    export_videopose3d(tmp_path / "lifter2.bin", TemporalModel(17, 2, 17, filter_widths=[3, 3], channels=8).eval())
    o.lifter, o.render = str(tmp_path / "lifter2.bin"), False
    run_infer([str(frames)], tmp_path / "out", o)
    assert [(tmp_path / "out" / f).stat().st_mtime_ns for f in ("detections.h5", "keypoints2d.h5")] == before
