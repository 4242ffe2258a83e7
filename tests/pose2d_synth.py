"""Tiny COCO / Halpe / PoseTrack keypoint datasets written by the tests: stick figures (one
colour per joint) drawn on noise, with annotation JSON in each dataset's own layout."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from poselift.datasets.joints import get_joint_set


def template(k: int) -> np.ndarray:
    """(K, 2) upright figure in the unit square (x right, y down), left joints at larger x."""
    t = np.linspace(0.1, 0.9, k)
    return np.stack([0.5 + 0.3 * np.sin(np.arange(k) * 2.4), t], axis=1)


def draw(img: np.ndarray, kps: np.ndarray, radius: int = 3) -> None:
    """Dots in a per-joint colour at (K, 2) image px (in place)."""
    for j, (x, y) in enumerate(kps):
        col = tuple(int(v) for v in (np.array([j * 53, j * 97, j * 151]) % 200 + 55))
        cv2.circle(img, (int(round(x)), int(round(y))), radius, col, -1)


def person(rng: np.random.Generator, k: int, img_wh: tuple[int, int], size: float) -> np.ndarray:
    """(K, 3) keypoints [x, y, v=2] of a figure of height ``size`` px placed inside the image."""
    w, h = img_wh
    s = np.array([size * 0.6, size])
    off = rng.uniform([0, 0], [max(w - s[0], 1), max(h - s[1], 1)])
    xy = template(k) * s + off + rng.normal(0, size * 0.01, (k, 2))
    return np.concatenate([xy, np.full((k, 1), 2.0)], axis=1)


def _ann(kp: np.ndarray, aid: int, iid: int) -> dict:
    vis = kp[:, 2] > 0
    x0, y0 = kp[vis, :2].min(0) - 4
    x1, y1 = kp[vis, :2].max(0) + 4
    return {"id": aid, "image_id": iid, "category_id": 1, "iscrowd": 0, "num_keypoints": int(vis.sum()),
            "keypoints": [float(v) for v in kp.reshape(-1)], "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": float((x1 - x0) * (y1 - y0))}


def write_coco(root: Path, n_images: int = 4, joint_set: str = "coco17", persons: int = 1,
               img_wh: tuple[int, int] = (96, 128), seed: int = 0, size: float = 100.0) -> Path:
    """COCO keypoints JSON (Halpe uses the same layout with 26 / 136 keypoints) + PNG images."""
    rng = np.random.default_rng(seed)
    k = get_joint_set(joint_set).num_joints
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(0, 60, (img_wh[1], img_wh[0], 3), dtype=np.uint8)
        for _ in range(persons):
            kp = person(rng, k, img_wh, size)
            draw(img, kp[:, :2])
            anns.append(_ann(kp, len(anns) + 1, i + 1))
        name = f"images/{i:04d}.png"
        cv2.imwrite(str(root / name), img)
        images.append({"id": i + 1, "file_name": name, "width": img_wh[0], "height": img_wh[1]})
    path = root / f"{joint_set}_train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "person"}]}))
    return path


def write_posetrack(root: Path, n_videos: int = 2, n_frames: int = 6, img_wh: tuple[int, int] = (96, 128),
                    seed: int = 0) -> Path:
    """PoseTrack18/21 JSON: images with vid_id / frame_id / is_labeled, annotations with
    track_id, 17 keypoints and bbox_head; one figure per video drifting a few px per frame."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for v in range(n_videos):
        vdir = root / "images" / "train" / f"{v:06d}_mpii_train"
        vdir.mkdir(parents=True, exist_ok=True)
        base = person(rng, 17, img_wh, 90.0)
        vel = rng.normal(0, 1.5, 2)
        for f in range(n_frames):
            kp = base.copy()
            kp[:, :2] += vel * f
            img = rng.integers(0, 60, (img_wh[1], img_wh[0], 3), dtype=np.uint8)
            draw(img, kp[:, :2])
            name = f"images/train/{v:06d}_mpii_train/{f:06d}.jpg"
            cv2.imwrite(str(root / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            iid = 10000 * (v + 1) + f
            images.append({"id": iid, "file_name": name, "vid_id": str(v), "frame_id": iid, "nframes": n_frames,
                           "is_labeled": True, "width": img_wh[0], "height": img_wh[1]})
            a = _ann(kp, len(anns) + 1, iid)
            a["track_id"] = 0
            head = kp[[0, 1, 2], :2]
            a["bbox_head"] = [float(head[:, 0].min() - 4), float(head[:, 1].min() - 4),
                              float(np.ptp(head[:, 0]) + 8), float(np.ptp(head[:, 1]) + 8)]
            anns.append(a)
    path = root / "posetrack_train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "person"}]}))
    return path
