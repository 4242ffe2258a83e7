"""Import TCMR/VIBE database files (``*_db.pt``: ``joblib.dump`` of frame-aligned arrays).

Per video (``vid_name``) one sequence is written, video by video, into

* ``<out>/<name>_features.h5`` (kind ``features``): ``features`` (T, 2048) float16 by
  default (``features_dtype='float32'`` keeps the reference precision) + ``frame_index``;
* ``<out>/<name>_gt.h5`` (kind ``gt``) when the DB has ``joints3D``, else
  ``<out>/<name>_keypoints2d.h5`` (kind ``keypoints2d``): ``keypoints`` (T, J2, 2) pixels,
  ``scores`` (T, J2) (the DB's 3rd column), ``joints_3d`` (T, J3, 3) metres, ``smpl_pose``
  (T, 72) / ``smpl_shape`` (T, 10) when the DB has non-zero SMPL, ``valid`` (T,),
  ``frame_index`` (T,) and ``bbox_cxcywh`` (T, 4) (the DB's [cx, cy, w, h], pixels).

The DB is opened with ``mmap_mode='r'`` through a restricted unpickler (numpy arrays and
plain containers only; object arrays and other globals are refused unless ``trust=True``),
so arrays stay memory-mapped and only one video is resident at a time.

Joint layouts differ between 2D and 3D in 3DPW (2D LSP-14, 3D SPIN-49 in train / LSP-14 in
val/test), so the header's ``joint_set`` is set only when both agree; the layouts of each
field are always in ``header.extra['layouts']``.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from poselift.core.errors import UserError

from ..cache import CacheHeader, CacheWriter

__all__ = ["TCMRImportError", "DBSpec", "DB_SPECS", "load_db", "video_runs", "import_tcmr_db",
           "parse_frame_ids", "file_fingerprint", "ImportSummary"]


class TCMRImportError(UserError, ValueError):
    """A DB file is malformed or unsafe; the message names the file and the key."""


@dataclass(frozen=True)
class DBSpec:
    """Per-dataset facts of the reference DB writers."""

    kp2d_layout: str
    kp3d_layout: dict[str, str] | None  # split -> layout; None for 2D-only datasets
    fps: float | None
    crop_scale: float | None  # crop scale used when the features were extracted (TCMR)
    keypoints_frame: str = "image"  # 'image' pixels (+ bbox) or 'crop224' (Insta)


DB_SPECS: dict[str, DBSpec] = {
    "3dpw": DBSpec("lsp14", {"train": "spin49", "val": "lsp14", "test": "lsp14"}, 30.0, 1.3),
    "h36m": DBSpec("spin49", {"*": "spin49"}, 25.0, 1.0),
    "mpii3d": DBSpec("spin49", {"*": "spin49"}, None, 1.0),
    "pennaction": DBSpec("spin49", None, None, 1.2),
    "posetrack": DBSpec("spin49", None, None, 1.3),
    "insta": DBSpec("insta25", None, None, None, keypoints_frame="crop224"),
}


# ------------------------------------------------------------------------ safe loading
def _allowed_globals() -> dict[str, Any]:
    from joblib.numpy_pickle import NumpyArrayWrapper

    from ..safe_pickle import plain_safe_globals

    allowed = plain_safe_globals()  # numpy arrays/scalars/dtypes, plain containers
    allowed["joblib.numpy_pickle.NumpyArrayWrapper"] = NumpyArrayWrapper
    # numpy.memmap is only legitimate as the ``subclass`` a NumpyArrayWrapper records; the
    # real class, called by REDUCE, creates or truncates any file (mode 'w+'). The name
    # resolves to a marker that refuses to be called; load_build swaps it for np.memmap
    # (joblib itself maps the array from this DB file, read-only).
    for name in _MEMMAP_NAMES:
        allowed[name] = _MemmapName
    return allowed


_MEMMAP_NAMES = ("numpy.memmap", "numpy.core.memmap.memmap", "numpy._core.memmap.memmap")


class _MemmapName:
    """Stands in for numpy.memmap inside a DB pickle; calling it is refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_MemmapName":
        raise TCMRImportError("refused to call global 'numpy.memmap' (it opens, creates or "
                              "truncates files); only joblib's array wrapper may name it")


def _make_unpickler(trust: bool, source: str) -> type:
    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

    from ..safe_pickle import _latin1_encoder

    allowed = _allowed_globals()

    class _SafeDBUnpickler(NumpyUnpickler):  # type: ignore[misc, valid-type]
        dispatch = NumpyUnpickler.dispatch.copy()

        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            if trust:
                return super().find_class(module, name)
            if full == "_codecs.encode":
                return _latin1_encoder(source)
            if full in allowed:
                return allowed[full]
            raise TCMRImportError(f"{source}: refused to unpickle global {full!r} (not a plain "
                                  f"numpy array); pass trust=True (--trust-pickle) only for "
                                  f"files you trust")

        def load_build(self) -> None:
            inst, state = self.stack[-2], self.stack[-1]
            if isinstance(state, dict) and state.get("subclass") is _MemmapName:
                state["subclass"] = np.memmap
            if (not trust and isinstance(inst, NumpyArrayWrapper) and isinstance(state, dict)
                    and np.dtype(state.get("dtype", "f4")).hasobject):
                # joblib reads object arrays with an unrestricted pickle.load
                raise TCMRImportError(f"{source}: refused an object-dtype array (it would be "
                                      f"unpickled without restrictions); pass trust=True")
            NumpyUnpickler.load_build(self)

        dispatch[pickle.BUILD[0]] = load_build

    return _SafeDBUnpickler


def load_db(path: str | os.PathLike, *, trust: bool = False, mmap: bool = True) -> dict[str, Any]:
    """``joblib.load(path, mmap_mode='r')`` with a restricted unpickler.

    Uncompressed dumps come back with every numpy array memory-mapped (nothing is read
    until sliced). Raises TCMRImportError naming the file for refused content.
    """
    import joblib.numpy_pickle as jnp

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DB file not found: {path}")
    validate = getattr(jnp, "_validate_fileobject_and_memmap", None)
    cls = _make_unpickler(trust, str(path))
    with open(path, "rb") as fh:
        if validate is not None:
            ctx = validate(fh, str(path), "r" if mmap else None)
        else:  # joblib < 1.5
            ctx = jnp._read_fileobject(fh, str(path), "r" if mmap else None)
        with ctx as opened:
            fobj, mode = (opened if isinstance(opened, tuple) else (opened, "r" if mmap else None))
            if isinstance(fobj, str):
                raise TCMRImportError(f"{path}: written by joblib < 0.10; re-dump it")
            try:
                up = cls(str(path), fobj, False, mmap_mode=mode)
            except TypeError:  # joblib < 1.4 has no ensure_native_byte_order
                up = cls(str(path), fobj, mmap_mode=mode)
            try:
                obj = up.load()
            except TCMRImportError as e:
                if str(e).startswith(str(path)):
                    raise
                raise TCMRImportError(f"{path}: {e}") from None
            except pickle.UnpicklingError as e:  # the latin-1-only codec guard
                if type(e).__name__ == "UnsafePickleError":
                    raise TCMRImportError(str(e)) from None
                raise TCMRImportError(f"{path}: cannot read DB file ({type(e).__name__}: {e})") from e
            except Exception as e:  # truncated or not a joblib pickle
                raise TCMRImportError(f"{path}: cannot read DB file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise TCMRImportError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    return obj


def file_fingerprint(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Cheap input fingerprint: size + first and last MiB (hashing 18 GB would take minutes)."""
    p = Path(path)
    h = hashlib.sha256(f"{p.stat().st_size}|".encode())
    with open(p, "rb") as fh:
        h.update(fh.read(block))
        fh.seek(max(0, p.stat().st_size - block))
        h.update(fh.read(block))
    return h.hexdigest()


# ------------------------------------------------------------------------ helpers
def _as_str(x: Any) -> str:
    return x.decode() if isinstance(x, (bytes, np.bytes_)) else str(x)


def video_runs(names: Any, n: int, chunk: int = 65536) -> list[tuple[str, int, int]]:
    """Contiguous runs of equal names as (name, start, stop), reading ``names`` in slices
    (a memory-mapped array or an HDF5 dataset)."""
    runs: list[tuple[str, int, int]] = []
    prev: str | None = None
    start = 0
    for s in range(0, n, chunk):
        block = [_as_str(v) for v in np.asarray(names[s:s + chunk]).reshape(-1)]
        for i, name in enumerate(block):
            if name != prev:
                if prev is not None:
                    runs.append((prev, start, s + i))
                prev, start = name, s + i
    if prev is not None:
        runs.append((prev, start, n))
    return runs


def _split_noncontiguous(runs: list[tuple[str, int, int]], path: Path, mode: str
                         ) -> list[tuple[str, int, int]]:
    seen: dict[str, int] = {}
    out = []
    for name, a, b in runs:
        k = seen.get(name, 0)
        if k and mode == "error":
            raise TCMRImportError(
                f"{path}: key 'vid_name': video {name!r} is not contiguous (another run starts at "
                f"row {a}); the reference assumes contiguity. Use noncontiguous='split' to import "
                f"each run as '{name}#<k>'")
        out.append((name if k == 0 else f"{name}#{k}", a, b))
        seen[name] = k + 1
    return out


_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def parse_frame_ids(values: np.ndarray, path: Path, key: str = "frame_id") -> np.ndarray:
    """Frame numbers as int64; strings (MPI-INF-3DHP image basenames) use their last digits."""
    v = np.asarray(values)
    if v.dtype.kind in "iu":
        return v.astype(np.int64).reshape(-1)
    if v.dtype.kind == "f":
        if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
            raise TCMRImportError(f"{path}: key {key!r} holds non-integer numbers")
        return v.astype(np.int64).reshape(-1)
    out = np.empty(v.size, np.int64)
    for i, s in enumerate(v.reshape(-1)):
        m = _DIGITS.search(_as_str(s))
        if m is None:
            raise TCMRImportError(f"{path}: key {key!r}: cannot read a frame number from "
                                  f"{_as_str(s)!r}")
        out[i] = int(m.group(1))
    return out


def _require(db: dict[str, Any], key: str, path: Path, n: int | None, tail: tuple | None = None
             ) -> Any:
    if key not in db:
        raise TCMRImportError(f"{path}: missing key {key!r} (keys: {sorted(db)})")
    arr = db[key]
    if n is not None and len(arr) != n:
        raise TCMRImportError(f"{path}: key {key!r} has {len(arr)} rows, 'vid_name' has {n}")
    if tail is not None:
        shp = tuple(arr.shape[1:])
        if len(shp) != len(tail) or any(t is not None and t != s for t, s in zip(tail, shp)):
            raise TCMRImportError(f"{path}: key {key!r} has shape {tuple(arr.shape)}, expected "
                                  f"(N, {', '.join('*' if t is None else str(t) for t in tail)})")
    return arr


@dataclass
class ImportSummary:
    """What an import wrote."""

    caches: dict[str, str]
    sequences: int
    frames: int
    skipped: int

    def summary(self) -> str:
        return (f"{self.sequences} sequences, {self.frames} frames ({self.skipped} already "
                f"present): " + ", ".join(f"{k}={v}" for k, v in self.caches.items()))


# ------------------------------------------------------------------------ importer
def _split_of(path: Path) -> str:
    for s in ("train", "val", "test"):
        if f"_{s}" in path.name:
            return s
    return "*"


def import_tcmr_db(db_path: str | os.PathLike, dataset: str, out_dir: str | os.PathLike, *,
                   name: str | None = None, features_dtype: str = "float16",
                   noncontiguous: str = "error", trust: bool = False, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None) -> ImportSummary:
    """Import one TCMR/VIBE DB file (see module docstring).

    Args:
        db_path: e.g. ``3dpw_test_db.pt``. dataset: a key of ``DB_SPECS``.
        out_dir: folder for the caches; ``name`` (default: file stem without ``_db``) prefixes
            them. features_dtype: 'float16' or 'float32'.
        noncontiguous: 'error' or 'split' for videos whose rows are not contiguous.
        trust: full unpickling (only for files you trust). overwrite: discard existing caches.
    """
    path = Path(db_path)
    if dataset not in DB_SPECS:
        raise KeyError(f"unknown TCMR dataset {dataset!r}; known: {sorted(DB_SPECS)}")
    if features_dtype not in ("float16", "float32"):
        raise ValueError(f"features_dtype must be 'float16' or 'float32', got {features_dtype!r}")
    spec = DB_SPECS[dataset]
    db = load_db(path, trust=trust)
    vid = _require(db, "vid_name", path, None)
    n = len(vid)
    runs = _split_noncontiguous(video_runs(vid, n), path, noncontiguous)
    frame_id = parse_frame_ids(np.asarray(_require(db, "frame_id", path, n)), path) \
        if "frame_id" in db else np.arange(n, dtype=np.int64)
    return write_sequences(
        runs=runs, frame_id=frame_id, arrays=db, spec=spec, dataset=dataset, source_path=path,
        split=_split_of(path), out_dir=Path(out_dir), name=name or path.stem.replace("_db", ""),
        features_dtype=features_dtype, overwrite=overwrite, progress=progress)


def _layouts(spec: DBSpec, split: str, has_3d: bool, n_joints_3d: int) -> dict[str, str]:
    out = {"keypoints": spec.kp2d_layout}
    if has_3d and spec.kp3d_layout is not None:
        by_count = {14: "lsp14", 49: "spin49"}
        # an unknown split (file renamed) is told apart by the joint count (3DPW: 49 vs 14)
        out["joints_3d"] = spec.kp3d_layout.get(split, spec.kp3d_layout.get(
            "*", by_count.get(n_joints_3d, "spin49")))
    return out


def _smpl_present(db: dict[str, Any], n: int, chunk: int = 1 << 16) -> bool:
    if "pose" not in db or "shape" not in db:
        return False
    for s in range(0, n, chunk):  # zeros in the released H36M script mean "no SMPL"
        if np.any(np.asarray(db["pose"][s:s + chunk])) or np.any(np.asarray(db["shape"][s:s + chunk])):
            return True
    return False


def write_sequences(*, runs: list[tuple[str, int, int]], frame_id: np.ndarray, arrays: Any,
                    spec: DBSpec, dataset: str, source_path: Path, split: str, out_dir: Path,
                    name: str, features_dtype: str, overwrite: bool,
                    progress: Callable[[str], None] | None = None) -> ImportSummary:
    """Write label and feature caches, one video at a time (shared by the HDF5 Insta reader).

    ``arrays`` maps DB keys to sliceable arrays (memory-mapped numpy or h5py datasets).
    """
    n = len(frame_id)
    for key, tail in (("joints2D", (None, 3)), ("features", (None,))):
        _require(arrays, key, source_path, n, tail)
    has_3d = "joints3D" in arrays
    if has_3d:
        _require(arrays, "joints3D", source_path, n, (None, 3))
    has_smpl = has_3d and _smpl_present(arrays, n)
    if has_smpl:
        _require(arrays, "pose", source_path, n, (72,))
        _require(arrays, "shape", source_path, n, (10,))
    valid_key = next((k for k in ("valid", "valid_i") if k in arrays), None)
    has_bbox = "bbox" in arrays
    if has_bbox:
        _require(arrays, "bbox", source_path, n, (4,))
    layouts = _layouts(spec, split, has_3d, arrays["joints3D"].shape[1] if has_3d else 0)
    from ..joints import get_joint_set

    for field, js in layouts.items():
        key = "joints2D" if field == "keypoints" else "joints3D"
        if arrays[key].shape[1] != get_joint_set(js).num_joints:
            raise TCMRImportError(f"{source_path}: key {key!r} has {arrays[key].shape[1]} joints, "
                                  f"the {dataset} layout {js!r} has {get_joint_set(js).num_joints}")
    common = layouts["keypoints"] if len(set(layouts.values())) == 1 else None
    fp = file_fingerprint(source_path)
    src = {"importer": "tcmr_db", "file": source_path.name, "format": "joblib db",
           "feature_backbone": "SPIN HMR ResNet-50 (layer4 avgpool)", "crop_scale": spec.crop_scale}
    extra = {"split": split, "layouts": layouts, "keypoints_frame": spec.keypoints_frame,
             "bbox_format": "cxcywh" if has_bbox else None, "smpl": has_smpl}
    kind = "gt" if has_3d else "keypoints2d"
    out_dir.mkdir(parents=True, exist_ok=True)
    label_path = out_dir / f"{name}_{'gt' if has_3d else 'keypoints2d'}.h5"
    feat_path = out_dir / f"{name}_features.h5"
    hl = CacheHeader(kind=kind, dataset=dataset, joint_set=common, source=src,
                     inputs_fingerprint=fp, extra=extra)
    hf = CacheHeader(kind="features", dataset=dataset, joint_set=None,
                     source=dict(src, dtype=features_dtype), inputs_fingerprint=fp,
                     extra={"split": split, "feature_dim": int(arrays["features"].shape[1])})
    frames = skipped = 0
    with CacheWriter(label_path, hl, overwrite=overwrite) as wl, \
            CacheWriter(feat_path, hf, overwrite=overwrite) as wf:
        for sid, a, b in runs:
            if wl.has(sid) and wf.has(sid):
                skipped += 1
                continue
            attrs = {"subject": split, "action": sid.rsplit("#", 1)[0], "fps": spec.fps,
                     "db_rows": [int(a), int(b)]}
            fi = frame_id[a:b]
            if not wl.has(sid):
                wl.write_sequence(sid, _label_arrays(arrays, a, b, fi, has_3d, has_smpl,
                                                     valid_key, has_bbox), attrs)
            if not wf.has(sid):
                feats = np.asarray(arrays["features"][a:b]).astype(features_dtype)
                wf.write_sequence(sid, {"features": feats, "frame_index": fi}, attrs)
            frames += b - a
            if progress is not None:
                progress(sid)
    return ImportSummary({"labels": str(label_path), "features": str(feat_path)},
                         len(runs), frames, skipped)


def _label_arrays(db: Any, a: int, b: int, fi: np.ndarray, has_3d: bool, has_smpl: bool,
                  valid_key: str | None, has_bbox: bool) -> dict[str, np.ndarray]:
    kp = np.asarray(db["joints2D"][a:b], dtype=np.float64)
    out = {"keypoints": kp[..., :2].astype(np.float32),
           "scores": kp[..., 2].astype(np.float32), "frame_index": fi}
    if has_3d:
        j3 = np.asarray(db["joints3D"][a:b])
        out["joints_3d"] = j3.astype(np.float64 if j3.dtype == np.float64 else np.float32)
    if has_smpl:
        out["smpl_pose"] = np.asarray(db["pose"][a:b], dtype=np.float32)
        out["smpl_shape"] = np.asarray(db["shape"][a:b], dtype=np.float32)
    if valid_key is not None:
        out["valid"] = np.asarray(db[valid_key][a:b]).reshape(b - a).astype(bool)
    if has_bbox:
        out["bbox_cxcywh"] = np.asarray(db["bbox"][a:b], dtype=np.float32)
    return out
