"""Tiny Human3.6M / HumanEva-I files in the exact VideoPose3D formats, for end-to-end tests.

``data_3d_<ds>.npz``: ``positions_3d`` = pickled {subject: {action: (T, J_raw, 3) float32
world metres}}; ``data_2d_<ds>_<src>.npz``: ``positions_2d`` = {subject: {action: [per
camera (T, J, 2) float32 pixels]}} and ``metadata`` = {num_joints, keypoints_symmetry
[, layout_name]}. Motion is a smooth, learnable perturbation of one shared skeleton.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from poselift.datasets.cameras import CAMERA_JSON
from poselift.datasets.joints import H36M32_TO_17

RAW = json.loads(CAMERA_JSON.read_text())
H36M_SYM = [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]
COCO_SYM = [[1, 3, 5, 7, 9, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16]]
HE_SYM = [[2, 3, 4, 8, 9, 10], [5, 6, 7, 11, 12, 13]]


def motion(rng: np.random.Generator, t: int, j: int, template: np.ndarray) -> np.ndarray:
    """(t, j, 3) float32 world metres: template + per-joint sinusoids + a wandering root."""
    tt = np.arange(t, dtype=np.float64)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (1, j, 3))
    freq = rng.uniform(0.1, 0.3, (1, j, 3))
    pose = template[None, :j] + 0.08 * np.sin(freq * tt + phase)
    root = np.concatenate([0.3 * np.sin(0.05 * tt[..., 0] + phase[..., 0, 0]),
                           0.3 * np.cos(0.04 * tt[..., 0] + phase[..., 0, 1]),
                           np.zeros_like(tt[..., 0])], axis=-1)
    return (pose + root[:, None, :]).astype(np.float32)


def template(j: int) -> np.ndarray:
    rng = np.random.default_rng(123)
    base = rng.normal(0, 0.12, (j, 3))
    base[:, 2] = np.abs(base[:, 2]) * 4 + 0.1  # above the floor, like a standing person
    return base


def world_to_cam(world: np.ndarray, ext: dict) -> np.ndarray:
    """Independent world -> camera: R^T (X - t), R from the (w, x, y, z) quaternion, t in mm."""
    w, x, y, z = ext["orientation"]
    r = Rotation.from_quat([x, y, z, w]).as_matrix()
    return (world.astype(np.float64) - np.array(ext["translation"]) / 1000) @ r


def h36m_pixels(xc: np.ndarray, intr: dict) -> np.ndarray:
    """The reference's distortion model in pixels (see datasets/cameras.py)."""
    f, c, k, p = (intr["focal_length"], intr["center"], intr["radial_distortion"],
                  intr["tangential_distortion"])
    x, y = xc[..., 0] / xc[..., 2], xc[..., 1] / xc[..., 2]
    r2 = x * x + y * y
    common = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3 + p[0] * x + p[1] * y
    return np.stack([f[0] * (x * common + p[0] * r2) + c[0],
                     f[1] * (y * common + p[1] * r2) + c[1]], -1).astype(np.float32)


def h36m_files(d: Path, takes: dict[str, dict[str, int]], coco_layout: bool = False
               ) -> tuple[Path, Path]:
    """data_3d_h36m.npz (32 raw joints) + data_2d_h36m_gt.npz (17 joints, projected)."""
    rng = np.random.default_rng(0)
    tpl = template(32)
    pos3d: dict = {}
    pos2d: dict = {}
    for subject, actions in takes.items():
        pos3d[subject], pos2d[subject] = {}, {}
        for action, t in actions.items():
            world = motion(rng, t, 32, tpl)
            pos3d[subject][action] = world
            pos2d[subject][action] = [
                h36m_pixels(world_to_cam(world[:, list(H36M32_TO_17)], ext), intr)
                for intr, ext in zip(RAW["h36m"]["intrinsic"], RAW["h36m"]["extrinsic"][subject])]
    p3, p2 = d / "data_3d_h36m.npz", d / "data_2d_h36m_gt.npz"
    np.savez_compressed(p3, positions_3d=pos3d)
    meta = ({"layout_name": "coco", "num_joints": 17, "keypoints_symmetry": COCO_SYM} if coco_layout
            else {"num_joints": 17, "keypoints_symmetry": H36M_SYM})  # gt files: no layout_name
    np.savez_compressed(p2, positions_2d=pos2d, metadata=meta)
    return p3, p2


def humaneva_files(d: Path, takes: dict[str, dict[str, int]]) -> tuple[Path, Path]:
    """data_3d_humaneva15.npz + data_2d_humaneva15_gt.npz (pinhole f=500 px, 640x480)."""
    rng = np.random.default_rng(1)
    tpl = template(15)
    pos3d: dict = {}
    pos2d: dict = {}
    for subject, actions in takes.items():
        phys = subject.split("/")[-1]
        pos3d[subject], pos2d[subject] = {}, {}
        for action, t in actions.items():
            world = motion(rng, t, 15, tpl)
            pos3d[subject][action] = world
            cams = []
            for ext in RAW["humaneva"]["extrinsic"][phys]:
                xc = world_to_cam(world, ext)
                assert (xc[..., 2] > 0.5).all(), "synthetic subject must be in front of the camera"
                cams.append((500 * xc[..., :2] / xc[..., 2:] + [320, 240]).astype(np.float32))
            pos2d[subject][action] = cams
    p3, p2 = d / "data_3d_humaneva15.npz", d / "data_2d_humaneva15_gt.npz"
    np.savez(p3, positions_3d=pos3d)
    np.savez(p2, positions_2d=pos2d, metadata={"layout_name": "humaneva15", "num_joints": 15,
                                               "keypoints_symmetry": HE_SYM})
    return p3, p2
