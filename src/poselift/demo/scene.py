"""Demo cameras and rendering: pinhole cameras around the subject, a stick figure with
thick limbs on a floor grid, written to real video files that the extraction stage reads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from poselift.datasets.joints import H36M17

__all__ = ["DemoCamera", "make_cameras", "render_video", "boxes_from_keypoints"]


@dataclass(frozen=True)
class DemoCamera:
    """World -> camera: X_cam = R @ (X - centre). Intrinsics in pixels, no distortion."""

    name: str
    R: np.ndarray       # (3, 3)
    centre: np.ndarray  # (3,) metres
    f: float
    width: int
    height: int

    def to_camera(self, X: np.ndarray) -> np.ndarray:
        """(..., 3) world -> camera frame (x right, y down, z forward), metres."""
        return (X - self.centre) @ self.R.T

    def project(self, Xc: np.ndarray) -> np.ndarray:
        """(..., 3) camera frame -> (..., 2) pixels."""
        z = np.clip(Xc[..., 2:3], 1e-3, None)
        return self.f * Xc[..., :2] / z + np.array([self.width / 2, self.height / 2])

    def params(self) -> dict:
        return {"R": self.R.tolist(), "centre": self.centre.tolist(), "focal_length": [self.f, self.f],
                "center": [self.width / 2, self.height / 2], "res_w": self.width, "res_h": self.height}


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    fwd = target - centre
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])


def make_cameras(n: int, size: int, rng: np.random.Generator) -> list[DemoCamera]:
    """``n`` cameras on a ring 5.5-7 m from the origin, 1.2-1.8 m high, looking at the
    subject's chest; focal length 0.9 x image size (a little wider than Human3.6M's
    1145 px at 1000 px, so walking subjects stay in view)."""
    cams = []
    for i in range(n):
        az = 2 * np.pi * i / n + rng.uniform(-0.3, 0.3) + 0.4
        dist, height = rng.uniform(5.5, 7.0), rng.uniform(1.2, 1.8)
        centre = np.array([dist * np.cos(az), dist * np.sin(az), height])
        R = _look_at(centre, np.array([0.0, 0.0, 1.0]))
        cams.append(DemoCamera(f"cam{i}", R, centre, 0.9 * size * rng.uniform(0.95, 1.05), size, size))
    return cams


def boxes_from_keypoints(kp: np.ndarray, margin: float = 0.15) -> np.ndarray:
    """(T, J, 2) pixels -> (T, 4) xyxy boxes around the joints with a relative margin
    (an annotation-style box, as datasets provide)."""
    lo, hi = kp.min(1), kp.max(1)
    pad = (hi - lo) * margin + 8.0
    return np.concatenate([lo - pad, hi + pad], 1).astype(np.float32)


_LIMB_COLOURS = {"l": (60, 160, 255), "r": (255, 120, 60), "c": (200, 200, 200)}


def _side(j: int) -> str:
    return "l" if j in H36M17.left else "r" if j in H36M17.right else "c"


def render_video(path: Path, world: np.ndarray, cam: DemoCamera, fps: float) -> None:
    """Draw the skeleton seen by ``cam`` into an mp4 (mp4v) video file.

    world: (T, 17, 3) metres. Limbs are drawn far-to-near so occlusion looks right.
    """
    w, h = cam.width, cam.height
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV could not open a video writer (mp4v)")
    floor = _floor_image(cam)
    cam_xyz = cam.to_camera(world)
    px = cam.project(cam_xyz)
    scale = cam.f / max(float(np.median(cam_xyz[..., 2])), 1.0)
    try:
        for t in range(world.shape[0]):
            img = floor.copy()
            bones = sorted(H36M17.bones(), key=lambda b: -cam_xyz[t, b[0], 2])
            for c, p in bones:
                thick = max(2, int(0.07 * scale))
                a, b = tuple(np.round(px[t, c]).astype(int)), tuple(np.round(px[t, p]).astype(int))
                cv2.line(img, a, b, _LIMB_COLOURS[_side(c)], thick, cv2.LINE_AA)
            head = tuple(np.round(px[t, 10]).astype(int))
            cv2.circle(img, head, max(3, int(0.09 * scale)), (180, 220, 240), -1, cv2.LINE_AA)
            writer.write(img)
    finally:
        writer.release()


def _floor_image(cam: DemoCamera) -> np.ndarray:
    img = np.full((cam.height, cam.width, 3), (70, 60, 50), np.uint8)
    g = np.arange(-6, 7, 1.0)
    for a in g:
        for seg in (np.array([[a, -6, 0], [a, 6, 0]]), np.array([[-6, a, 0], [6, a, 0]])):
            pts = np.linspace(seg[0], seg[1], 40)
            c = cam.to_camera(pts)
            ok = c[:, 2] > 0.5
            if ok.sum() < 2:
                continue
            p = np.round(cam.project(c[ok])).astype(np.int32)
            cv2.polylines(img, [p], False, (110, 100, 90), 1, cv2.LINE_AA)
    return img
