"""The rendered MP4: the frame with boxes, track ids and 2D skeletons beside one 3D skeleton
panel per track, drawn with numpy/OpenCV primitives (no OpenGL, no ffmpeg binary).

3D view as VideoPose3D's ``--render``: the camera-frame prediction is rotated into world
coordinates with the dummy Human3.6M camera orientation (t = 0), shifted so that the lowest
joint of the whole track rests on z = 0, and seen from elevation 15°, azimuth 70° in a box of
radius 1.7 m (x, y within ±0.85 m of the root, z in [0, 1.7]) that follows the root.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from poselift.datasets.joints import get_joint_set

__all__ = ["TrackView", "to_world_upright", "render_video", "PANEL_BG", "DUMMY_CAMERA_Q"]

# Human3.6M camera orientation (w, x, y, z) that VideoPose3D's custom dataset uses "only for visualization".
DUMMY_CAMERA_Q = np.array([0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088])
PANEL_BG = (250, 250, 250)
RADIUS = 1.7
ELEV, AZIM = math.radians(15.0), math.radians(70.0)
_COLORS = [(40, 120, 230), (60, 180, 75), (200, 80, 200), (0, 160, 200), (180, 130, 40), (90, 90, 220)]


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) vectors by the unit quaternion q = (w, x, y, z)."""
    w, u = q[0], np.broadcast_to(q[1:], v.shape)
    uv = np.cross(u, v)
    return v + 2.0 * (w * uv + np.cross(u, uv))


def to_world_upright(joints_cam: np.ndarray) -> np.ndarray:
    """(T, J, 3) camera-frame metres -> world frame (z up), lowest joint of the clip at z = 0."""
    world = qrot(DUMMY_CAMERA_Q, np.asarray(joints_cam, np.float64))
    finite = np.isfinite(world[..., 2])
    if finite.any():
        world[..., 2] -= world[..., 2][finite].min()
    return world


@dataclass
class TrackView:
    """What the renderer needs of one track (frames are source frame indices)."""

    label: str
    track_id: int
    frames: np.ndarray        # (T,)
    detected: np.ndarray      # (T,) bool
    boxes: np.ndarray         # (T, 4) xyxy px (NaN when unknown)
    kp2d: np.ndarray          # (T, K, 2) px
    joint_set_2d: str
    world: np.ndarray | None  # (T, J, 3) upright world metres, or None (not lifted)
    joint_set_3d: str


def _project(p: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """Orthographic view (matplotlib's elevation/azimuth convention) -> panel pixels."""
    q = p - centre
    right = np.array([-math.sin(AZIM), math.cos(AZIM), 0.0])
    up = np.array([-math.sin(ELEV) * math.cos(AZIM), -math.sin(ELEV) * math.sin(AZIM), math.cos(ELEV)])
    u, v = q @ right, q @ up
    s = size / (1.35 * RADIUS)
    return np.stack([size / 2 + u * s, size * 0.88 - v * s], -1)


def _panel(view: TrackView, t: int | None, size: int, color: tuple[int, int, int]) -> np.ndarray:
    img = np.full((size, size, 3), PANEL_BG, np.uint8)
    cv2.putText(img, f"{view.label}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    if view.world is None or t is None:
        cv2.putText(img, "not in view" if view.world is not None else "not lifted", (6, 38),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (120, 120, 120), 1, cv2.LINE_AA)
        return img
    pose = view.world[t]
    centre = np.array([pose[0, 0], pose[0, 1], 0.0])  # the box follows the root over the ground
    r = RADIUS / 2
    for a in np.linspace(-r, r, 5):  # ground grid
        for seg in (([a, -r, 0], [a, r, 0]), ([-r, a, 0], [r, a, 0])):
            p = _project(np.asarray(seg) + [centre[0], centre[1], 0], centre, size)
            cv2.line(img, tuple(np.int32(p[0])), tuple(np.int32(p[1])), (205, 205, 205), 1, cv2.LINE_AA)
    js = get_joint_set(view.joint_set_3d)
    pts = _project(pose, centre, size)
    right = set(js.right)
    for j, par in js.bones():
        c = (40, 40, 220) if j in right else (30, 30, 30)
        cv2.line(img, tuple(np.int32(pts[j])), tuple(np.int32(pts[par])), c, 2, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, tuple(np.int32(p)), 2, color, -1, cv2.LINE_AA)
    if not view.detected[t]:
        cv2.putText(img, "interpolated", (6, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (120, 120, 120), 1,
                    cv2.LINE_AA)
    return img


def _draw_2d(img: np.ndarray, view: TrackView, t: int, scale: float, color: tuple[int, int, int]) -> None:
    if not view.detected[t]:
        return
    b = view.boxes[t] * scale
    if np.isfinite(b).all():
        cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), color, 2)
        cv2.putText(img, f"id {view.track_id}", (int(b[0]), max(int(b[1]) - 4, 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    js = get_joint_set(view.joint_set_2d)
    pts = view.kp2d[t] * scale
    for j, par in js.bones():
        if j < 26 and par < 26:  # body only: faces and hands would clutter a small render
            cv2.line(img, tuple(np.int32(pts[j])), tuple(np.int32(pts[par])), color, 2, cv2.LINE_AA)


def render_video(frames: Iterator[tuple[int, np.ndarray | None]], frame_size: tuple[int, int],
                 views: list[TrackView], out: Path, fps: float, *, height: int = 360,
                 max_panels: int = 4, preview: Path | None = None,
                 overlay: Callable[[int, np.ndarray, float, float], None] | None = None) -> dict[str, Any]:
    """Write ``out`` (MP4, OpenCV ``mp4v``); one output frame per source frame. Panels go to the
    ``max_panels`` tracks with the most frames. ``preview``: the same frames as VP8 WebM, which
    browsers play (none plays MPEG-4 part 2, the only MP4 codec OpenCV's wheels can write), at
    half size;
    skipped (``"preview": None``) where this OpenCV cannot write WebM. ``overlay(i, frame, sx, sy)``
    draws on the resized frame i (scale sx, sy from source pixels) before the 2D skeletons.
    Returns {"frames", "width", "height", "frame_width", "panels", "preview"}."""
    w0, h0 = frame_size
    scale = height / h0
    fw = int(round(w0 * scale)) // 2 * 2
    panels = sorted(views, key=lambda v: -len(v.frames))[:max_panels]
    width = fw + height * max(len(panels), 1)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), float(fps or 25.0), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{out}: OpenCV cannot open an MP4 writer (mp4v) here")
    web = None
    # VP8 encodes several times slower than mp4v: the browser preview is written at half size.
    psize = (width // 4 * 2, height // 4 * 2)
    if preview is not None:
        web = cv2.VideoWriter(str(preview), cv2.VideoWriter_fourcc(*"VP80"), float(fps or 25.0), psize)
        if not web.isOpened():
            web, preview = None, None
    pos = {id(v): {int(f): i for i, f in enumerate(v.frames)} for v in views}
    color = {id(v): _COLORS[k % len(_COLORS)] for k, v in enumerate(views)}
    written = 0
    try:
        for i, frame in frames:
            canvas = np.zeros((height, width, 3), np.uint8)
            if frame is None:
                left = np.full((height, fw, 3), 60, np.uint8)
                cv2.putText(left, f"frame {i}: unreadable", (10, height // 2), cv2.FONT_HERSHEY_SIMPLEX,
                            0.6, (255, 255, 255), 1, cv2.LINE_AA)
            else:
                left = cv2.resize(frame, (fw, height), interpolation=cv2.INTER_AREA)
                if overlay is not None:
                    overlay(i, left, fw / w0, height / h0)
                for v in views:
                    t = pos[id(v)].get(i)
                    if t is not None:
                        _draw_2d(left, v, t, fw / w0, color[id(v)])
            canvas[:, :fw] = left
            if not panels:
                canvas[:, fw:] = PANEL_BG
                cv2.putText(canvas, "no person", (fw + 10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (90, 90, 90), 1)
            for k, v in enumerate(panels):
                canvas[:, fw + k * height: fw + (k + 1) * height] = _panel(v, pos[id(v)].get(i), height, color[id(v)])
            writer.write(canvas)
            if web is not None:
                web.write(cv2.resize(canvas, psize, interpolation=cv2.INTER_AREA))
            written += 1
    finally:
        writer.release()
        if web is not None:
            web.release()
    return {"frames": written, "width": width, "height": height, "frame_width": fw, "panels": len(panels),
            "preview": preview}
