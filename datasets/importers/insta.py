"""Import InstaVariety features (``insta_train_db.h5``, VIBE/TCMR layout) into caches.

The file holds frame-aligned datasets ``vid_name`` (bytes ``<tfrecord path>-<index>``),
``frame_id``, ``joints2D`` (N, 25, 3) in the Insta order (``INSTA25``) in 224-crop pixels,
and ``features`` (N, 2048). Everything is read in slices (video by video), so memory stays
bounded by one video whatever the file size. Output: ``<name>_keypoints2d.h5`` and
``<name>_features.h5`` (see ``tcmr_db``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from .tcmr_db import (DB_SPECS, ImportSummary, TCMRImportError, _split_noncontiguous,
                      parse_frame_ids, video_runs, write_sequences)

__all__ = ["import_insta_h5"]


def import_insta_h5(h5_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                    name: str = "insta_train", features_dtype: str = "float16",
                    noncontiguous: str = "error", overwrite: bool = False,
                    progress: Callable[[str], None] | None = None) -> ImportSummary:
    """Convert ``insta_train_db.h5`` video by video (see module docstring)."""
    path = Path(h5_path)
    if not path.is_file():
        raise FileNotFoundError(f"InstaVariety file not found: {path}")
    if features_dtype not in ("float16", "float32"):
        raise ValueError(f"features_dtype must be 'float16' or 'float32', got {features_dtype!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TCMRImportError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        for key in ("vid_name", "joints2D", "features"):
            if key not in f:
                raise TCMRImportError(f"{path}: missing dataset {key!r} (has {sorted(f.keys())})")
        n = f["vid_name"].shape[0]
        runs = _split_noncontiguous(video_runs(f["vid_name"], n), path, noncontiguous)
        if "frame_id" in f:
            fid = np.concatenate([parse_frame_ids(f["frame_id"][s:s + 65536], path)
                                  for s in range(0, n, 65536)]) if n else np.zeros(0, np.int64)
        else:
            fid = np.arange(n, dtype=np.int64)
        arrays = {k: f[k] for k in ("joints2D", "features")}
        return write_sequences(runs=runs, frame_id=fid, arrays=arrays, spec=DB_SPECS["insta"],
                               dataset="insta", source_path=path, split="train",
                               out_dir=Path(out_dir), name=name, features_dtype=features_dtype,
                               overwrite=overwrite, progress=progress)
