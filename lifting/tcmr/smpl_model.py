"""SMPL for the SPIN/VIBE/TCMR regressors, through smplx and without chumpy.

* ``load_body_model_arrays(path)`` reads ``SMPL_*.pkl`` (official pickles hold chumpy ``Ch``
  objects and a scipy sparse ``J_regressor``; a restricted unpickler turns them into numpy
  arrays and refuses every other global) or a converted ``.npz``.
* ``convert_smpl_pkl_to_npz(src, dst)``: one-time conversion, after which no pickle is read.
* ``SPINSMPL``: ``smplx.SMPL`` built from arrays (smplx's ``data_struct`` path) that returns
  vertices and the 49 SPIN joints (smplx's 45 + ``J_regressor_extra`` 9, re-ordered).
* ``build_spin_smpl(body_model_dir)``: the above from TCMR's base-data folder layout.
"""
from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import scipy.sparse as sp
import smplx
import torch
from smplx.utils import Struct
from poselift.core.errors import UserError

__all__ = [
    "SMPL_KEYS", "SPIN_JOINT_MAP", "BodyModelError", "find_body_model_file",
    "load_body_model_arrays", "convert_smpl_pkl_to_npz", "load_extra_regressor",
    "load_mean_params", "SPINSMPL", "SMPLOutput49", "build_spin_smpl",
]

SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table",
             "f")

# Index into [smplx's 45 joints, J_regressor_extra's 9] for each of the 49 SPIN joints
# (order = poselift.datasets.joints.SPIN49): 24 nose, 25/26 r/l eye, 27/28 r/l ear,
# 29-34 feet vertices, 45.. the extra regressor rows.
SPIN_JOINT_MAP = (24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30,
                  31, 32, 33, 34,
                  8, 5, 45, 46, 4, 7, 21, 19, 17, 16, 18, 20, 47, 48, 49, 50, 51, 52, 53, 24,
                  26, 25, 28, 27)


class BodyModelError(UserError, ValueError):
    """A body-model file is missing, malformed or unsafe; the message names file and key."""


# ---------------------------------------------------------------- restricted unpickling
class _ChShim:
    """Stands in for ``chumpy.ch.Ch``: keeps the pickled state, becomes an array later."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _SparseShim:
    """Stands in for scipy sparse matrices; rebuilt from their raw arrays, never __dict__."""

    fmt = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _CscShim(_SparseShim):
    fmt = "csc"


class _CsrShim(_SparseShim):
    fmt = "csr"


class _CooShim(_SparseShim):
    fmt = "coo"


_SPARSE_SHIMS = {"csc_matrix": _CscShim, "csr_matrix": _CsrShim, "coo_matrix": _CooShim}
_SHIMS = (_ChShim, _CscShim, _CsrShim, _CooShim)


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    # copyreg._reconstructor would call base.__new__/__init__ with arbitrary arguments
    if cls not in _SHIMS or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from base {base!r}")
    return object.__new__(cls)


def _numpy_global(module: str, name: str) -> Any:
    import numpy._core.multiarray as ma
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct", "scalar"):
        return getattr(ma, name)
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(np.dtypes, name)
    return None


class _BodyModelUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("chumpy"):
            if module in ("chumpy.ch", "chumpy") and name == "Ch":
                return _ChShim
            raise BodyModelError(
                f"{self._path}: chumpy global {module}.{name} is not a plain array; only "
                "chumpy.ch.Ch is supported (convert the file where chumpy is installed)")
        if module.startswith("scipy.sparse") and name in _SPARSE_SHIMS:
            return _SPARSE_SHIMS[name]
        if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
            return _safe_reconstructor
        if (module, name) in (("builtins", "object"), ("__builtin__", "object")):
            return object
        if (module, name) in (("builtins", "set"), ("__builtin__", "set")):
            return set  # chumpy's pickled state holds a set of dirty variable names
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        obj = _numpy_global(module, name) if module.startswith("numpy") else None
        if obj is None:
            raise BodyModelError(f"{self._path}: refusing to unpickle global {module}.{name}")
        return obj


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected bytes encoding {encoding!r}")
    return text.encode("latin1")


def _resolve(obj: Any, path: Path, key: str) -> Any:
    """Turn shims (recursively) into numpy arrays / scipy sparse matrices."""
    if isinstance(obj, _ChShim):
        state = obj.state if isinstance(obj.state, dict) else {}
        for field in ("x", "a"):
            if field in state:
                return np.asarray(_resolve(state[field], path, key))
        raise BodyModelError(f"{path}: key {key!r} holds a chumpy object without 'x'/'a' data")
    if isinstance(obj, _SparseShim):
        st = obj.state if isinstance(obj.state, dict) else {}
        shape = tuple(st.get("_shape", st.get("shape", ())))
        try:
            if obj.fmt == "coo":
                return sp.coo_matrix((st["data"], (st["row"], st["col"])), shape=shape)
            cls = sp.csc_matrix if obj.fmt == "csc" else sp.csr_matrix
            return cls((st["data"], st["indices"], st["indptr"]), shape=shape)
        except (KeyError, ValueError, TypeError) as err:
            raise BodyModelError(f"{path}: key {key!r}: malformed sparse matrix ({err})") from err
    return obj


# ------------------------------------------------------------------------ file loading
def find_body_model_file(body_model_dir: str | Path, gender: str = "neutral") -> Path:
    """``SMPL_<GENDER>.npz`` if present, else ``SMPL_<GENDER>.pkl``; error names both."""
    d = Path(body_model_dir)
    stem = f"SMPL_{gender.upper()}"
    for ext in (".npz", ".pkl"):
        if (d / (stem + ext)).is_file():
            return d / (stem + ext)
    raise FileNotFoundError(f"body model file {stem}.pkl (or {stem}.npz) missing in {d}")


def _check_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    v = arrays["v_template"].shape
    if len(v) != 2 or v[1] != 3:
        raise BodyModelError(f"{path}: key 'v_template' has shape {v}, expected (V, 3)")
    n_v = v[0]
    n_j = arrays["kintree_table"].shape[-1]
    expect = {"shapedirs": (n_v, 3, None), "posedirs": (n_v, 3, (n_j - 1) * 9),
              "J_regressor": (n_j, n_v), "weights": (n_v, n_j), "kintree_table": (2, n_j),
              "f": (None, 3)}
    for key, shp in expect.items():
        got = arrays[key].shape
        if len(got) != len(shp) or any(e is not None and e != g for e, g in zip(shp, got)):
            raise BodyModelError(f"{path}: key {key!r} has shape {got}, expected "
                                 f"{tuple('*' if e is None else e for e in shp)}")


def load_body_model_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read an SMPL model file (``.pkl`` with or without chumpy, or ``.npz``).

    Returns the ``SMPL_KEYS`` as numpy arrays (``J_regressor`` dense). A missing key, a bad
    shape or a pickle global outside the allow-list raises ``BodyModelError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"body model file {path.name} missing in {path.parent}")
    if path.suffix == ".npz":
        raw = _npz_members(path)
    else:
        with open(path, "rb") as fh:
            try:
                raw = _BodyModelUnpickler(fh, path).load()
            except BodyModelError:
                raise
            except Exception as err:  # truncated or hostile pickles
                raise BodyModelError(f"{path}: cannot unpickle body model ({err})") from err
        if not isinstance(raw, dict):
            raise BodyModelError(f"{path}: expected a dict, got {type(raw).__name__}")
    arrays = {}
    for key in SMPL_KEYS:
        if key not in raw:
            raise BodyModelError(f"{path}: missing key {key!r}")
        val = _resolve(raw[key], path, key)
        arrays[key] = val.toarray() if sp.issparse(val) else np.asarray(val)
    _check_arrays(arrays, path)
    return arrays


def convert_smpl_pkl_to_npz(src: str | Path, dst: str | Path) -> Path:
    """Convert an (official, chumpy) SMPL ``.pkl`` into a plain ``.npz``; returns ``dst``."""
    arrays = load_body_model_arrays(src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(dst)
    return dst


def _require(d: Path, name: str) -> Path:
    if not (d / name).is_file():
        raise FileNotFoundError(f"body model file {name} missing in {d}")
    return d / name


def _npz_members(path: Path) -> dict[str, np.ndarray]:
    """Every member of a .npz; an object array (it would need unpickling) is refused by key."""
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            try:
                out[k] = z[k]
            except ValueError as e:
                raise BodyModelError(f"{path}: key {k!r} is not a plain numeric array ({e})") from None
    return out


def load_extra_regressor(body_model_dir: str | Path, name: str = "J_regressor_extra.npy",
                         rows: int | None = 9, n_verts: int | None = None) -> np.ndarray:
    """Load a (rows, V) vertex regressor ``.npy`` from the base-data folder, shape-checked."""
    path = _require(Path(body_model_dir), name)
    try:
        reg = np.load(path, allow_pickle=False)
    except ValueError as e:  # an object array would need unpickling
        raise BodyModelError(f"{path}: not a plain numeric .npy array ({e})") from None
    if reg.ndim != 2 or (rows is not None and reg.shape[0] != rows) or (
            n_verts is not None and reg.shape[1] != n_verts):
        raise BodyModelError(f"{path}: shape {reg.shape}, expected ({rows or '*'}, "
                             f"{n_verts or 'V'})")
    return reg.astype(np.float32)


def load_mean_params(body_model_dir: str | Path) -> dict[str, torch.Tensor]:
    """``smpl_mean_params.npz`` -> {'pose': (1, 144), 'shape': (1, 10), 'cam': (1, 3)} float32."""
    path = _require(Path(body_model_dir), "smpl_mean_params.npz")
    out = {}
    z = _npz_members(path)
    for key, n in (("pose", 144), ("shape", 10), ("cam", 3)):
        if key not in z:
            raise BodyModelError(f"{path}: missing key {key!r}")
        arr = np.asarray(z[key]).reshape(-1)
        if arr.shape != (n,):
            raise BodyModelError(f"{path}: key {key!r} has {arr.size} values, expected {n}")
        out[key] = torch.from_numpy(arr.astype(np.float32)).unsqueeze(0)
    return out


# ---------------------------------------------------------------------- the model
class SMPLOutput49(NamedTuple):
    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor    # (B, 49, 3) SPIN order


class SPINSMPL(smplx.SMPL):
    """smplx.SMPL from in-memory arrays, returning SPIN's 49 joints.

    No per-batch parameters are created (betas/pose are always passed in), so the module
    holds only the model buffers plus ``J_regressor_extra`` (9, V).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], J_regressor_extra: np.ndarray) -> None:
        struct = Struct(**{k: arrays[k] for k in SMPL_KEYS})
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a 10-betas warning
            super().__init__("", data_struct=struct, create_betas=False,
                             create_global_orient=False, create_body_pose=False,
                             create_transl=False, num_betas=10)
        extra = torch.as_tensor(np.asarray(J_regressor_extra), dtype=torch.float32)
        if extra.dim() != 2 or extra.shape[1] != self.v_template.shape[0]:
            raise BodyModelError(f"J_regressor_extra has shape {tuple(extra.shape)}, expected "
                                 f"(9, {self.v_template.shape[0]})")
        self.register_buffer("J_regressor_extra", extra)
        self.register_buffer("joint_map", torch.tensor(SPIN_JOINT_MAP, dtype=torch.long),
                             persistent=False)

    def forward(self, betas: torch.Tensor, rotmat: torch.Tensor) -> SMPLOutput49:  # type: ignore[override]
        """betas (B, 10), rotmat (B, 24, 3, 3) -> vertices (B, V, 3), joints (B, 49, 3)."""
        out = super().forward(betas=betas, body_pose=rotmat[:, 1:],
                              global_orient=rotmat[:, 0].unsqueeze(1), pose2rot=False)
        extra = torch.einsum("bik,ji->bjk", out.vertices, self.J_regressor_extra)
        joints = torch.cat([out.joints, extra], dim=1)[:, self.joint_map]
        return SMPLOutput49(out.vertices, joints)


def build_spin_smpl(body_model_dir: str | Path, gender: str = "neutral") -> SPINSMPL:
    """Build ``SPINSMPL`` from a folder holding ``SMPL_<GENDER>.{npz,pkl}`` and
    ``J_regressor_extra.npy``; a missing file raises FileNotFoundError naming it and the dir."""
    arrays = load_body_model_arrays(find_body_model_file(body_model_dir, gender))
    extra = load_extra_regressor(body_model_dir, n_verts=arrays["v_template"].shape[0])
    return SPINSMPL(arrays, extra)
