"""Import 3DPW's own sequence files (``sequenceFiles/{train,validation,test}/*.pkl``).

Each file is a Python-2 pickle (read with ``encoding='latin1'`` through a restricted
unpickler: numpy arrays, dtypes and scalars only) of one recording with per-actor lists:
``poses`` (T, 72) world axis-angle, ``betas`` (10+,), ``trans`` (T, 3), ``jointPositions``
(T, 72) world joints, ``poses2d`` (T, 3, 18) OpenPose-18 (x, y, conf), ``campose_valid``
(T,), ``genders``; plus ``cam_poses`` (T, 4, 4) world->camera, ``cam_intrinsics`` (3, 3),
``img_frame_ids`` (T,) and ``sequence`` (name).

One gt-cache sequence per actor, id ``<sequence>_<actor>`` (TCMR's ``vid_name``):
``joints_3d`` (T, 24, 3) SMPL joints in the camera frame (metres), ``joints_3d_world``,
``smpl_pose`` (T, 72) with the root rotated into the camera frame (as TCMR's DBs),
``smpl_shape`` (T, 10), ``trajectory`` (T, 3) world translation, ``keypoints`` (T, 18, 2)
pixels + ``scores``, ``valid`` (campose_valid), ``frame_index`` (img_frame_ids). No features.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from ..cache import CacheHeader, CacheWriter
from ..safe_pickle import safe_pickle_load
from .tcmr_db import ImportSummary, TCMRImportError, file_fingerprint

__all__ = ["read_3dpw_sequence", "import_3dpw_sequences"]

SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}


def read_3dpw_sequence(path: str | os.PathLike, *, trust: bool = False) -> dict[str, Any]:
    """Load one sequence pickle; refused globals raise an error naming the file."""
    path = Path(path)
    try:
        # Python-2 pickles of numpy arrays: latin1 strings, bytes via _codecs.encode
        data = safe_pickle_load(path, encoding="latin1", trust=trust)
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise TCMRImportError(f"{path}: {e}") from e
    if not isinstance(data, dict):
        raise TCMRImportError(f"{path}: expected a dict, got {type(data).__name__}")
    return data


def _get(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise TCMRImportError(f"{path}: missing key {key!r} (keys: {sorted(d)})")
    return d[key]


def _actor_arrays(d: dict[str, Any], k: int, path: Path) -> dict[str, np.ndarray]:
    cam = np.asarray(_get(d, "cam_poses", path), dtype=np.float64)
    t = cam.shape[0]

    def actor(key: str, tail: tuple[int, ...]) -> np.ndarray:
        arr = np.asarray(_get(d, key, path)[k], dtype=np.float64)
        if arr.shape[0] != t or (tail and arr.reshape(t, -1).shape[1] != int(np.prod(tail))):
            raise TCMRImportError(f"{path}: key {key!r} of actor {k} has shape {arr.shape}, "
                                  f"expected ({t}, {', '.join(map(str, tail))})")
        return arr.reshape((t,) + tail)

    if cam.shape[1:] != (4, 4):
        raise TCMRImportError(f"{path}: key 'cam_poses' has shape {cam.shape}, expected (T, 4, 4)")
    rot, tr = cam[:, :3, :3], cam[:, :3, 3]
    joints_w = actor("jointPositions", (24, 3))
    joints_c = np.einsum("tij,tkj->tki", rot, joints_w) + tr[:, None]
    pose = actor("poses", (72,))
    root = Rotation.from_matrix(rot) * Rotation.from_rotvec(pose[:, :3])
    pose_c = pose.copy()
    pose_c[:, :3] = root.as_rotvec()
    p2d = np.transpose(actor("poses2d", (3, 18)), (0, 2, 1))  # -> (T, 18, 3)
    betas = np.asarray(_get(d, "betas", path)[k], dtype=np.float64).reshape(-1)[:10]
    fid = np.asarray(_get(d, "img_frame_ids", path)).reshape(-1).astype(np.int64)
    if fid.shape[0] != t:
        raise TCMRImportError(f"{path}: key 'img_frame_ids' has {fid.shape[0]} entries, "
                              f"'cam_poses' has {t}")
    return {
        "joints_3d": joints_c.astype(np.float32), "joints_3d_world": joints_w.astype(np.float32),
        "smpl_pose": pose_c.astype(np.float32),
        "smpl_shape": np.tile(betas.astype(np.float32), (t, 1)),
        "trajectory": actor("trans", (3,)).astype(np.float32),
        "keypoints": p2d[..., :2].astype(np.float32), "scores": p2d[..., 2].astype(np.float32),
        "valid": actor("campose_valid", ()).astype(bool), "frame_index": fid,
    }


def import_3dpw_sequences(root: str | os.PathLike, split: str, out_path: str | os.PathLike, *,
                          trust: bool = False, overwrite: bool = False) -> ImportSummary:
    """All ``<root>/sequenceFiles/<split>/*.pkl`` (or ``<root>/<split>/*.pkl``) into one gt cache.

    split: 'train', 'validation' or 'test'.
    """
    if split not in SPLIT_DIRS:
        raise ValueError(f"split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    root = Path(root)
    folder = root / "sequenceFiles" / split
    if not folder.is_dir():
        folder = root / split
    files = sorted(folder.glob("*.pkl"))
    if not files:
        raise FileNotFoundError(f"no 3DPW sequence files (*.pkl) in {folder}")
    import hashlib

    fp = hashlib.sha256("|".join(f"{p.name}:{file_fingerprint(p)}" for p in files).encode())
    header = CacheHeader(
        kind="gt", dataset="3dpw", joint_set=None,
        source={"importer": "3dpw_sequence_files", "folder": folder.name},
        inputs_fingerprint=fp.hexdigest(),
        extra={"split": SPLIT_DIRS[split], "layouts": {"keypoints": "openpose18",
                                                      "joints_3d": "smpl24"},
               "joints_3d_frame": "camera", "smpl": True, "keypoints_frame": "image"})
    n_seq = frames = skipped = 0
    with CacheWriter(out_path, header, overwrite=overwrite) as w:
        for p in files:
            d = read_3dpw_sequence(p, trust=trust)
            name = str(_get(d, "sequence", p))
            genders = list(d.get("genders", []))
            for k in range(len(_get(d, "poses", p))):
                sid = f"{name}_{k}"
                n_seq += 1
                if w.has(sid):
                    skipped += 1
                    continue
                arrays = _actor_arrays(d, k, p)
                intr = np.asarray(d.get("cam_intrinsics", np.zeros((3, 3)))).reshape(-1)
                w.write_sequence(sid, arrays, {
                    "subject": SPLIT_DIRS[split], "action": name, "fps": 30.0,
                    "gender": str(genders[k]) if k < len(genders) else "",
                    "cam_intrinsics": [float(x) for x in intr], "source_file": p.name})
                frames += arrays["valid"].shape[0]
    return ImportSummary({"gt": str(out_path)}, n_seq, frames, skipped)
