"""Read pickled objects out of ``.npz`` files without executing foreign code.

VideoPose3D stores its datasets as ``np.savez`` archives whose members
(``positions_3d``, ``positions_2d``, ``metadata``) are 0-d object arrays, i.e. pickles.
``np.load(allow_pickle=True)`` would run whatever a crafted file asks for, so members
are read here with a restricted unpickler that can only rebuild ndarrays, dtypes and
numpy scalars (dicts, lists, tuples, strings and numbers need no globals at all).
Any other global is refused with :class:`UnsafePickleError` naming the file, the
member and the global. ``trust_pickle=True`` is the explicit opt-out for files you made.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..safe_pickle import UnsafePickleError, safe_pickle_load

from poselift.core.errors import UserError

__all__ = ["UnsafePickleError", "NpzFormatError", "load_npz_member", "npz_members", "sha256_file"]


class NpzFormatError(UserError, ValueError):
    """The file is not a readable ``.npz`` archive or lacks a member."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def npz_members(path: str | os.PathLike) -> list[str]:
    """Member names of an ``.npz`` (without the ``.npy`` suffix)."""
    try:
        with zipfile.ZipFile(path) as z:
            return [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
    except (zipfile.BadZipFile, OSError) as e:
        raise NpzFormatError(f"{path}: not a readable .npz archive ({e})") from e


def load_npz_member(path: str | os.PathLike, key: str, *, trust_pickle: bool = False) -> Any:
    """Load member ``key`` of an ``.npz``; object members are unpickled safely and a 0-d
    object array is unwrapped to its item (the reference's ``.item()``)."""
    path = Path(path)
    where = f"{path} (member {key!r})"
    members = npz_members(path)
    if key not in members:
        raise NpzFormatError(f"{path}: no member {key!r} (it has {members})")
    with zipfile.ZipFile(path) as z:
        raw = z.read(key + ".npy")
    fp = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            shape, fortran, dtype = np.lib.format._read_array_header(fp, version)  # noqa: SLF001
    except ValueError as e:
        raise NpzFormatError(f"{where}: not a valid .npy member ({e})") from e
    if not dtype.hasobject:
        fp.seek(0)
        return np.lib.format.read_array(fp, allow_pickle=False)
    try:
        if trust_pickle:
            arr = pickle.load(fp, encoding="latin1")  # noqa: S301 - explicit opt-in
        else:
            arr = safe_pickle_load(fp, source=where, encoding="latin1")
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or malformed pickle data
        raise NpzFormatError(f"{where}: cannot unpickle ({type(e).__name__}: {e})") from e
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ():
        return arr.item()
    return arr
