"""Build the demo dataset: motion -> cameras -> videos -> ground-truth and detection caches."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from poselift.core.progress import progress_bar

from poselift.datasets.cache import CacheHeader, CacheWriter

from .motion import MOTIONS, animate, make_body
from .scene import DemoCamera, boxes_from_keypoints, make_cameras, render_video

__all__ = ["DemoSettings", "DemoClip", "build_demo_data"]

# (scale, limb ratio) per subject: S1, S2 train, S3 held out
SUBJECTS = {"S1": (1.0, 1.0), "S2": (0.92, 1.06), "S3": (1.06, 0.96)}


@dataclass(frozen=True)
class DemoSettings:
    frames: int = 80
    fps: float = 25.0
    cameras: int = 2
    image_size: int = 256
    seed: int = 0
    # detector-like noise on the projected ground truth (pixels)
    noise_px: float = 1.5
    drift_px: float = 2.0
    outlier_rate: float = 0.01
    outlier_px: float = 12.0


@dataclass(frozen=True)
class DemoClip:
    seq_id: str
    subject: str
    action: str
    camera: DemoCamera
    video: Path
    joints_cam: np.ndarray   # (T, 17, 3) metres
    joints_world: np.ndarray  # (T, 17, 3)
    kp_gt: np.ndarray        # (T, 17, 2) pixels
    boxes: np.ndarray        # (T, 4) xyxy pixels


def _detections(kp: np.ndarray, s: DemoSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Projected ground truth plus detector-like errors: white jitter, slowly drifting
    per-joint bias and rare outliers; scores fall with the simulated error."""
    T, J, _ = kp.shape
    jitter = rng.normal(0, s.noise_px, kp.shape)
    drift = rng.normal(0, 1, (T + 8, J, 2)).cumsum(0)
    drift = (drift[8:] - drift[:-8]) / np.sqrt(8) * s.drift_px  # band-limited random walk
    out = rng.random((T, J)) < s.outlier_rate
    jump = rng.normal(0, s.outlier_px, kp.shape) * out[..., None]
    det = kp + jitter + drift + jump
    err = np.linalg.norm(det - kp, axis=-1)
    scores = np.exp(-(err / (4 * s.noise_px)) ** 2) * 0.6 + 0.35
    return det.astype(np.float32), scores.astype(np.float32)


def build_demo_data(root: Path, s: DemoSettings, progress: bool = True) -> tuple[list[DemoClip], Path, Path]:
    """Render every clip and write ``gt.h5`` and ``detections.h5`` under ``root``.

    Returns (clips, gt cache path, detections cache path).
    """
    rng = np.random.default_rng(s.seed)
    cams = make_cameras(s.cameras, s.image_size, rng)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(repr((s, sorted(SUBJECTS.items()), sorted(MOTIONS))).encode()).hexdigest()
    clips: list[DemoClip] = []
    jobs = [(sub, act, cam) for sub in SUBJECTS for act in MOTIONS for cam in cams]
    for sub, act, cam in progress_bar(jobs, desc="render videos", unit="clip", progress=progress):
        body = make_body(*SUBJECTS[sub])
        world = animate(body, act, s.frames, s.fps, phase=float(rng.uniform(0, 2)))
        jc = cam.to_camera(world).astype(np.float32)
        kp = cam.project(jc).astype(np.float32)
        video = root / "videos" / f"{sub}_{act}_{cam.name}.mp4"
        if not video.exists():
            render_video(video, world, cam, s.fps)
        clips.append(DemoClip(f"{sub}/{act}/{cam.name}", sub, act, cam, video, jc, world, kp,
                              boxes_from_keypoints(kp)))
    header_kw = dict(dataset="poselift-demo", joint_set="h36m17", inputs_fingerprint=fingerprint)
    gt_path, det_path = root / "gt.h5", root / "detections.h5"
    gt_hdr = CacheHeader(kind="gt", source={"extractor": "procedural-motion", "seed": s.seed}, **header_kw)
    det_hdr = CacheHeader(kind="keypoints2d", source={
        "extractor": "synthetic-detections", "weights_sha256": "none",
        "contract": {"noise_px": s.noise_px, "drift_px": s.drift_px, "outlier_rate": s.outlier_rate,
                     "outlier_px": s.outlier_px}}, **header_kw)
    with CacheWriter(gt_path, gt_hdr) as gw, CacheWriter(det_path, det_hdr) as dw:
        for c in clips:
            attrs = {"subject": c.subject, "action": c.action, "camera": c.camera.name, "fps": s.fps,
                     "image_size": [s.image_size, s.image_size], "camera_params": c.camera.params(),
                     "video": c.video.name}
            frames = np.arange(s.frames, dtype=np.int64)
            if not gw.has(c.seq_id):
                gw.write_sequence(c.seq_id, {"joints_3d": c.joints_cam, "joints_3d_world": c.joints_world,
                                             "frame_index": frames}, attrs)
            if not dw.has(c.seq_id):
                det, scores = _detections(c.kp_gt, s, np.random.default_rng([s.seed, len(c.seq_id), hash_id(c.seq_id)]))
                dw.write_sequence(c.seq_id, {"keypoints": det, "scores": scores, "boxes": c.boxes,
                                             "frame_index": frames, "valid": np.ones(s.frames, bool)}, attrs)
    return clips, gt_path, det_path


def hash_id(seq_id: str) -> int:
    """Stable small integer from a sequence id (Python's hash() is salted per process)."""
    return int(hashlib.sha1(seq_id.encode()).hexdigest()[:8], 16)
