"""Reading and checking single VideoPose3D files (``data_3d_<ds>.npz``, ``data_2d_<ds>_<src>.npz``).

Dataset specs and layout names live here too; ``videopose3d.py`` plans and writes the caches.
Every check raises :class:`VideoPose3DImportError` naming file, subject, action and camera.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from poselift.core.errors import UserError

from ..joints import H36M32_TO_17, get_joint_set
from .safe_npz import load_npz_member

__all__ = ["VideoPose3DImportError", "DatasetSpec", "DATASETS", "LAYOUTS", "read_positions_3d",
           "Source2D", "read_positions_2d", "source_name", "check_finite", "get_spec"]


class VideoPose3DImportError(UserError, ValueError):
    """Bad or inconsistent VideoPose3D input; the message names file/subject/action."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    joint_set: str | None           # of the 3D file after joint reduction
    raw_joints: int | None          # joints per frame in the 3D file
    keep: tuple[int, ...] | None    # raw -> kept joint indices
    fps: float | None
    discard: tuple[tuple[str, str], ...] = ()
    camera_id_in_seq: bool = False  # H36M names cameras by id, others cam<i>


DATASETS: dict[str, DatasetSpec] = {
    "h36m": DatasetSpec("h36m", "h36m17", 32, H36M32_TO_17, 50.0,
                        discard=(("S11", "Directions"),), camera_id_in_seq=True),
    "humaneva15": DatasetSpec("humaneva15", "humaneva15", 15, None, 60.0),
    "custom": DatasetSpec("custom", None, None, None, None),
}

# VideoPose3D metadata ``layout_name`` -> poselift joint set.
LAYOUTS = {"h36m": "h36m17", "coco": "coco17", "humaneva15": "humaneva15", "mpii": "mpii16"}


def get_spec(dataset: str) -> DatasetSpec:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise VideoPose3DImportError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}") from None


def check_finite(arr: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        frames = np.unique(np.nonzero(bad)[0])
        raise VideoPose3DImportError(f"{where}: {int(bad.sum())} NaN/inf values in frames "
                                     f"{frames[:10].tolist()}{' ...' if frames.size > 10 else ''}")


def _nested(obj: Any, path: Path, what: str) -> dict[str, dict[str, Any]]:
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise VideoPose3DImportError(f"{path}: {what} must be a dict {{subject: {{action: ...}}}}, "
                                     f"got {type(obj).__name__}")
    return obj


# --- 3D ---------------------------------------------------------------------------------------
def read_positions_3d(path: str | os.PathLike, dataset: str, *, trust_pickle: bool = False
                      ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Read ``positions_3d`` -> ({subject: {action: (T, J, 3) float32 world metres}}, discarded).

    Human3.6M keeps the 17 joints of ``H36M32_TO_17`` and drops S11 "Directions"."""
    path, spec = Path(path), get_spec(dataset)
    if spec.raw_joints is None:
        raise VideoPose3DImportError(f"{path}: dataset {dataset!r} has no 3D data")
    data = _nested(load_npz_member(path, "positions_3d", trust_pickle=trust_pickle), path,
                   "positions_3d")
    out: dict[str, dict[str, np.ndarray]] = {}
    discarded = []
    for subject, actions in data.items():
        out[subject] = {}
        for action, pos in actions.items():
            where = f"{path}: subject {subject!r}, action {action!r}"
            if (subject, action) in spec.discard:
                discarded.append(f"{subject}/{action}")
                continue
            pos = np.asarray(pos)
            if pos.ndim != 3 or pos.shape[1:] != (spec.raw_joints, 3) or len(pos) == 0:
                raise VideoPose3DImportError(f"{where}: expected (T>0, {spec.raw_joints}, 3) "
                                             f"positions, got shape {pos.shape}")
            check_finite(pos, where)
            if spec.keep is not None:
                pos = pos[:, list(spec.keep)]
            out[subject][action] = np.ascontiguousarray(pos, dtype=np.float32)
    return out, discarded


# --- 2D ---------------------------------------------------------------------------------------
@dataclass
class Source2D:
    """One parsed 2D file: positions {subject: {action: [(T, J, 2) | None per camera]}}."""

    path: Path
    name: str
    positions: dict[str, dict[str, list[np.ndarray | None]]]
    metadata: dict[str, Any]
    joint_set: str
    symmetry: list[list[int]]


def source_name(path: Path, dataset: str) -> str:
    """``data_2d_h36m_cpn_ft_h36m_dbb.npz`` -> ``cpn_ft_h36m_dbb``; other names -> stem.
    A file named for another dataset is refused (its cameras would not match)."""
    stem = path.name[:-4] if path.name.endswith(".npz") else path.name
    prefix = f"data_2d_{dataset}_"
    if stem.startswith(prefix) and len(stem) > len(prefix):
        return stem[len(prefix):]
    m = re.match(r"data_2d_(h36m|humaneva15|humaneva20|custom)_", stem)
    if m:
        raise VideoPose3DImportError(f"{path}: the file name says dataset {m.group(1)!r}, "
                                     f"but the import is for {dataset!r}")
    return stem


def _layout_joint_set(path: Path, meta: dict[str, Any], num_joints: int,
                      left: list[int], right: list[int], expected: str | None) -> str:
    layout = meta.get("layout_name")
    if layout is not None:
        if layout not in LAYOUTS:
            raise VideoPose3DImportError(f"{path}: metadata layout_name {layout!r} is not "
                                         f"supported; known: {sorted(LAYOUTS)}")
        name = LAYOUTS[layout]
    elif expected is not None:
        name = get_joint_set(expected).name
    else:
        # The reference's ground-truth 2D files carry no layout_name: infer it.
        fits = [js for js in LAYOUTS.values()
                if get_joint_set(js).num_joints == num_joints
                and set(get_joint_set(js).left) == set(left)
                and set(get_joint_set(js).right) == set(right)]
        if len(fits) != 1:
            raise VideoPose3DImportError(
                f"{path}: metadata has no layout_name and {num_joints} joints with symmetry "
                f"{[left, right]} {'match no' if not fits else 'match several'} known layout(s); "
                f"pass the joint set explicitly (--joint-set)")
        name = fits[0]
    if expected is not None and get_joint_set(expected).name != name:
        raise VideoPose3DImportError(f"{path}: 2D layout is {name!r} (layout_name "
                                     f"{layout!r}), but joint set {expected!r} was requested")
    return name


def read_positions_2d(path: str | os.PathLike, dataset: str, *, joint_set: str | None = None,
                      trust_pickle: bool = False) -> Source2D:
    """Read and check one 2D file: metadata, layout -> joint set, symmetry, array shapes."""
    path = Path(path)
    name = source_name(path, dataset)
    meta = load_npz_member(path, "metadata", trust_pickle=trust_pickle)
    if not isinstance(meta, dict):
        raise VideoPose3DImportError(f"{path}: metadata must be a dict, got {type(meta).__name__}")
    for key in ("num_joints", "keypoints_symmetry"):
        if key not in meta:
            raise VideoPose3DImportError(f"{path}: metadata lacks {key!r} (it has {sorted(meta)})")
    num_joints = int(meta["num_joints"])
    sym = meta["keypoints_symmetry"]
    if len(sym) != 2:
        raise VideoPose3DImportError(f"{path}: metadata keypoints_symmetry must be [left, right]")
    left, right = [int(i) for i in sym[0]], [int(i) for i in sym[1]]
    js_name = _layout_joint_set(path, meta, num_joints, left, right, joint_set)
    js = get_joint_set(js_name)
    if js.num_joints != num_joints:
        raise VideoPose3DImportError(f"{path}: metadata num_joints={num_joints}, but layout "
                                     f"{js_name!r} has {js.num_joints} joints")
    # Compared as sets: the reference's MPII metadata pairs left/right in a different order.
    if set(left) != set(js.left) or set(right) != set(js.right):
        raise VideoPose3DImportError(
            f"{path}: metadata keypoints_symmetry left={left} right={right} disagrees with joint "
            f"set {js_name!r} (left={list(js.left)}, right={list(js.right)})")
    positions = _nested(load_npz_member(path, "positions_2d", trust_pickle=trust_pickle), path,
                        "positions_2d")
    for subject, actions in positions.items():
        for action, cams in actions.items():
            if not isinstance(cams, (list, tuple)):
                raise VideoPose3DImportError(f"{path}: subject {subject!r}, action {action!r}: "
                                             f"expected a list with one array per camera")
            cams = list(cams)
            for i, kp in enumerate(cams):
                if kp is None:
                    continue  # HumanEva unlabeled takes may miss a camera
                kp = np.asarray(kp)
                where = f"{path}: subject {subject!r}, action {action!r}, camera {i}"
                if kp.ndim != 3 or kp.shape[2] < 2 or len(kp) == 0:
                    raise VideoPose3DImportError(f"{where}: expected (T>0, J, 2) keypoints, got "
                                                 f"shape {kp.shape}")
                if kp.shape[1] != num_joints:
                    raise VideoPose3DImportError(f"{where}: {kp.shape[1]} joints, but the file's "
                                                 f"layout {js_name!r} has {num_joints}")
                cams[i] = np.asarray(kp[..., :2], dtype=np.float32)
            actions[action] = cams
    return Source2D(path, name, positions, dict(meta), js_name, [left, right])
