"""Mesh export (.obj / .ply through trimesh) and snapshot images without OpenGL.

Coordinates are camera-style: x right, y down, z away from the viewer (what SMPL regressors
such as TCMR/VIBE output). The snapshot is an orthographic view along +z drawn with the
painter's algorithm: faces sorted far-to-near and filled with ``cv2.fillPoly``, Lambert
shading from a light at the viewer, then skeleton lines on top. No pyrender / EGL / OSMesa.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

__all__ = ["export_mesh", "export_meshes", "project_orthographic", "render_snapshot"]


def _check_mesh(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"verts: expected (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces: expected (F, 3), got {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= v.shape[0]):
        raise ValueError(f"faces index vertices outside [0, {v.shape[0]})")
    return v, f


def export_mesh(path: str | Path, verts: np.ndarray, faces: np.ndarray) -> Path:
    """Write one mesh; the format follows the suffix (.obj or .ply). verts (V, 3), faces (F, 3)."""
    import trimesh

    path = Path(path)
    if path.suffix not in (".obj", ".ply"):
        raise ValueError(f"{path}: mesh format must be .obj or .ply")
    v, f = _check_mesh(verts, faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)  # keep vertex order and count
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    mesh.export(tmp)
    tmp.replace(path)
    return path


def export_meshes(out_dir: str | Path, verts: np.ndarray, faces: np.ndarray,
                  frames: Sequence[int], fmt: str = "obj") -> list[Path]:
    """One file per frame: ``<out_dir>/frame_<NNNNNN>.<fmt>``. verts (K, V, 3)."""
    if fmt not in ("obj", "ply"):
        raise ValueError(f"fmt must be 'obj' or 'ply', got {fmt!r}")
    vs = np.asarray(verts)
    if vs.ndim != 3 or len(vs) != len(frames):
        raise ValueError(f"verts {vs.shape} must be (K, V, 3) with K = {len(frames)} frames")
    return [export_mesh(Path(out_dir) / f"frame_{int(k):06d}.{fmt}", v, faces)
            for k, v in zip(frames, vs)]


def project_orthographic(points: np.ndarray, lo: np.ndarray, scale: float, size: int,
                         margin: int) -> np.ndarray:
    """(N, 3) -> (N, 2) pixel coordinates of x, y: ``(p - lo) * scale + margin``."""
    return (np.asarray(points, np.float64)[:, :2] - lo) * scale + margin


def render_snapshot(path: str | Path | None, verts: np.ndarray, faces: np.ndarray, *,
                    joints: np.ndarray | None = None,
                    bones: Sequence[tuple[int, int]] = (), size: int = 512,
                    color: tuple[int, int, int] = (200, 170, 140),
                    background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Render a mesh (+ skeleton) to a (size, size, 3) uint8 BGR image; written if ``path``.

    verts (V, 3), faces (F, 3); joints (J, 3) in the same frame; bones (child, parent) pairs.
    The view is fitted to the mesh (and joints) with a 5 % margin.
    """
    v, f = _check_mesh(verts, faces)
    pts = v if joints is None else np.concatenate([v, np.asarray(joints, np.float64)])
    margin = int(0.05 * size)
    lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
    scale = (size - 2 * margin) / max(float((hi - lo).max()), 1e-9)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    px = project_orthographic(v, lo, scale, size, margin)
    tri = v[f]                                             # (F, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True).clip(1e-12)
    shade = 0.25 + 0.75 * np.abs(normal[:, 2])             # light from the viewer (-z)
    order = np.argsort(-tri[:, :, 2].mean(axis=1), kind="stable")  # far faces first
    poly = np.round(px[f] * 16).astype(np.int32)           # 4 bits of sub-pixel precision
    base = np.asarray(color, np.float64)
    for k in order:
        c = tuple(int(x) for x in base * shade[k])
        cv2.fillPoly(img, [poly[k]], c, lineType=cv2.LINE_AA, shift=4)
    if joints is not None:
        jp = np.round(project_orthographic(np.asarray(joints), lo, scale, size, margin)).astype(int)
        for a, b in bones:
            cv2.line(img, tuple(map(int, jp[a])), tuple(map(int, jp[b])), (40, 40, 220), 2,
                     cv2.LINE_AA)
        for p in jp:
            cv2.circle(img, tuple(map(int, p)), 3, (30, 160, 30), -1, cv2.LINE_AA)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), img):
            raise OSError(f"{path}: cv2.imwrite failed (unsupported extension?)")
    return img
