"""Tiny synthetic TCMR/VIBE DB files in the reference formats (tests, benchmarks, demos).

``write_3dpw_db`` writes a ``joblib.dump`` dict exactly as the 3DPW DB writer lays it out
(vid_name, frame_id, joints2D (N, 14, 3) LSP pixels, joints3D (N, 49|14, 3), pose, shape,
bbox [cx, cy, w, h], features (N, D), valid); ``write_insta_h5`` the InstaVariety HDF5.
Features are a fixed random linear function of the pose plus noise, so a model can learn.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

__all__ = ["write_3dpw_db", "write_insta_h5", "make_tiny_tcmr_caches"]


def _videos(rng: np.random.Generator, lengths: list[int], feat_dim: int, gap_at: int | None):
    proj = np.random.default_rng(123).normal(size=(72, feat_dim)) / 4
    names, fids, poses, feats = [], [], [], []
    for v, n in enumerate(lengths):
        t = np.linspace(0, 2 * np.pi, n)[:, None]
        pose = 0.3 * np.sin(t + rng.uniform(0, 6, 72)[None]) * rng.uniform(0.2, 1, 72)[None]
        fid = np.arange(n)
        if gap_at is not None and v == 0:
            fid[gap_at:] += 5  # 3DPW drops frames silently
        names += [f"seq{v:02d}_0"] * n
        fids.append(fid)
        poses.append(pose)
        feats.append(pose @ proj + 0.05 * rng.normal(size=(n, feat_dim)))
    return (np.array(names), np.concatenate(fids), np.concatenate(poses).astype(np.float32),
            np.concatenate(feats).astype(np.float32))


def write_3dpw_db(path: str | Path, *, lengths: list[int], feat_dim: int = 2048,
                  joints3d: int = 49, seed: int = 0, gap_at: int | None = None,
                  invalid_every: int = 0) -> Path:
    """A 3DPW-style DB (``joints3d`` = 49 as train, 14 as val/test)."""
    import joblib

    rng = np.random.default_rng(seed)
    names, fid, pose, feats = _videos(rng, lengths, feat_dim, gap_at)
    n = len(names)
    bbox = np.tile([500.0, 400.0, 300.0, 300.0], (n, 1)) + rng.normal(size=(n, 4))
    kp = np.concatenate([bbox[:, None, :2] + rng.uniform(-120, 120, (n, 14, 2)),
                         (rng.random((n, 14, 1)) > 0.1).astype(np.float64)], axis=2)
    valid = np.ones(n)
    if invalid_every:
        valid[::invalid_every] = 0
    db = {"vid_name": names, "frame_id": fid, "img_name": np.array([f"img_{i}.jpg" for i in range(n)]),
          "joints2D": kp, "joints3D": rng.normal(scale=0.3, size=(n, joints3d, 3)).astype(np.float32),
          "pose": pose, "shape": (0.5 * rng.normal(size=(n, 10))).astype(np.float32),
          "bbox": bbox, "features": feats, "valid": valid}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(db, path)
    return path


def write_insta_h5(path: str | Path, *, lengths: list[int], feat_dim: int = 2048,
                   seed: int = 1) -> Path:
    """An ``insta_train_db.h5``-style file (vid_name bytes, frame_id, joints2D, features)."""
    rng = np.random.default_rng(seed)
    names, fid, _, feats = _videos(rng, lengths, feat_dim, None)
    n = len(names)
    kp = np.concatenate([rng.uniform(20, 200, (n, 25, 2)), np.ones((n, 25, 1))], axis=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["vid_name"] = np.array([f"tfrecord_{s}".encode() for s in names])
        f["frame_id"] = fid
        f["joints2D"] = kp
        f["features"] = feats
    return path


def make_tiny_tcmr_caches(out_dir: str | Path, *, feat_dim: int = 32, seed: int = 0,
                          train_lengths: tuple[int, ...] = (40, 36, 30)) -> Path:
    """Import tiny 3dpw_train/3dpw_val/3dpw_test DBs and an Insta file into ``out_dir``."""
    from poselift.datasets.importers.insta import import_insta_h5
    from poselift.datasets.importers.tcmr_db import import_tcmr_db

    d = Path(out_dir)
    raw = d / "raw"
    specs = {"3dpw_train": dict(lengths=list(train_lengths), joints3d=49, gap_at=20),
             "3dpw_val": dict(lengths=[24, 20], joints3d=14, invalid_every=7),
             "3dpw_test": dict(lengths=[22, 18], joints3d=14, invalid_every=5)}
    for i, (name, kw) in enumerate(specs.items()):
        p = write_3dpw_db(raw / f"{name}_db.pt", feat_dim=feat_dim, seed=seed + i, **kw)
        import_tcmr_db(p, "3dpw", d, features_dtype="float32")
    import_insta_h5(write_insta_h5(raw / "insta_train_db.h5", lengths=[30, 25], feat_dim=feat_dim,
                                   seed=seed + 9), d, features_dtype="float32")
    return d
