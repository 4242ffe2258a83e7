"""poselift HDF5 cache format, version 1: names, field specs, header, errors.

One file per source (ground truth, one per 2D estimator, one per feature backbone),
joined by sequence id. See ``docs/cache-format.md`` for the full description.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from poselift.core.errors import UserError

SCHEMA_NAME = "poselift-cache"
SCHEMA_VERSION = 1
KINDS = ("gt", "keypoints2d", "features", "predictions", "detections")
SEQ_GROUP = "sequences"


class CacheError(UserError):
    """Any problem with a cache file; messages name the file, sequence and field."""


class CacheMismatchError(CacheError):
    """A cache is valid but is not the one the caller expected (schema, fingerprint, joints)."""


class IncompleteCacheError(CacheError):
    """A writer was interrupted before finalising; its committed sequences are kept."""


@dataclass(frozen=True)
class FieldSpec:
    """Shape rule for a per-sequence dataset: time-major, ``tail`` gives the trailing dims.

    A tail entry of ``"J"`` must equal the file's joint count, ``"D"`` any width, an int that value.
    """

    tail: tuple[Any, ...]
    dtypes: tuple[str, ...]
    unit: str = ""
    check_finite: bool = True


FIELDS: dict[str, FieldSpec] = {
    "keypoints": FieldSpec(("J", 2), ("float32",), "px"),
    "scores": FieldSpec(("J",), ("float32",), "1"),
    "boxes": FieldSpec((4,), ("float32",), "px xyxy"),
    "frame_index": FieldSpec((), ("int64", "int32"), "frame", check_finite=False),
    "valid": FieldSpec((), ("bool",), "", check_finite=False),
    "track_id": FieldSpec((), ("int64", "int32"), "", check_finite=False),
    "features": FieldSpec(("D",), ("float16", "float32"), "1"),
    "joints_3d": FieldSpec(("J", 3), ("float32", "float64"), "m"),
    "joints_3d_world": FieldSpec(("J", 3), ("float32", "float64"), "m"),
    "smpl_pose": FieldSpec((72,), ("float32",), "rad axis-angle"),
    "smpl_shape": FieldSpec((10,), ("float32",), "1"),
    "trajectory": FieldSpec((3,), ("float32",), "m"),
    "verts": FieldSpec(("D", 3), ("float32", "float16"), "m"),
}

# What each kind must carry per sequence (others are optional).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "gt": ("joints_3d",),
    "keypoints2d": ("keypoints",),
    "features": ("features",),
    "predictions": ("joints_3d",),
    # one row per person box (time-major over boxes, not frames): boxes, frame_index, track_id
    "detections": ("boxes", "frame_index"),
}


@dataclass
class CacheHeader:
    """Root attributes of a cache. ``source`` holds extractor name, weights sha256 and the
    preprocessing contract; ``inputs_fingerprint`` identifies the inputs it was made from."""

    kind: str
    dataset: str
    joint_set: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    inputs_fingerprint: str = ""
    units: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # One fingerprint per input (video/sequence id -> sha256): a resume re-does only the
    # sequences of inputs whose fingerprint changed (see ``compare_headers``).
    input_fingerprints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CacheError(f"unknown cache kind {self.kind!r}; expected one of {KINDS}")
        if not self.units:
            self.units = {k: v.unit for k, v in FIELDS.items()}

    def identity(self) -> dict[str, Any]:
        """The parts that must agree for a resumed writer to append to existing work."""
        return {"kind": self.kind, "dataset": self.dataset, "joint_set": self.joint_set,
                "source": self.source, "inputs_fingerprint": self.inputs_fingerprint}

    def to_attrs(self) -> dict[str, Any]:
        from poselift import __version__

        return {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "dataset": self.dataset,
            "joint_set": self.joint_set or "",
            "source": json.dumps(self.source, sort_keys=True),
            "inputs_fingerprint": self.inputs_fingerprint,
            "units": json.dumps(self.units, sort_keys=True),
            "extra": json.dumps(self.extra, sort_keys=True),
            "input_fingerprints": json.dumps(self.input_fingerprints, sort_keys=True),
            "poselift_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    @classmethod
    def from_attrs(cls, attrs: Any, path: str = "?") -> "CacheHeader":
        check_schema(attrs, path)
        try:
            return cls(kind=str(attrs["kind"]), dataset=str(attrs["dataset"]),
                       joint_set=str(attrs["joint_set"]) or None,
                       source=json.loads(attrs["source"]),
                       inputs_fingerprint=str(attrs["inputs_fingerprint"]),
                       units=json.loads(attrs["units"]), extra=json.loads(attrs.get("extra", "{}")),
                       input_fingerprints=json.loads(attrs.get("input_fingerprints", "{}")))
        except KeyError as e:
            raise CacheError(f"{path}: root attribute {e.args[0]!r} is missing") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CacheHeader":
        return cls(**json.loads(text))


def check_schema(attrs: Any, path: str) -> None:
    name = attrs.get("schema")
    if isinstance(name, bytes):
        name = name.decode()
    if name != SCHEMA_NAME:
        raise CacheMismatchError(f"{path}: not a poselift cache (schema attribute is {name!r}, "
                                 f"expected {SCHEMA_NAME!r})")
    version = int(attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise CacheMismatchError(f"{path}: cache schema version {version}, this poselift reads "
                                 f"version {SCHEMA_VERSION}; re-create the cache or convert it")


def diff_identity(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Human-readable list of differing keys between two header identities."""
    out = []
    for k in sorted(set(have) | set(want)):
        if have.get(k) != want.get(k):
            out.append(f"{k}: file has {have.get(k)!r}, expected {want.get(k)!r}")
    return out


def compare_headers(have: "CacheHeader", want: "CacheHeader") -> tuple[list[str], list[str]]:
    """(setting differences, changed inputs) between a stored and a requested header.

    When both record per-input fingerprints, inputs are compared one by one: the second list
    names the inputs whose fingerprint changed (new inputs are not changes), and the overall
    ``inputs_fingerprint`` is not a setting. Otherwise any input change is a setting difference.
    """
    a, b = have.identity(), want.identity()
    if have.input_fingerprints and want.input_fingerprints:
        a.pop("inputs_fingerprint")
        b.pop("inputs_fingerprint")
        changed = sorted(k for k, v in want.input_fingerprints.items()
                         if k in have.input_fingerprints and have.input_fingerprints[k] != v)
        return diff_identity(a, b), changed
    return diff_identity(a, b), []


def belongs_to(seq_id: str, inputs: "set[str] | list[str]") -> bool:
    """Whether a sequence was made from one of ``inputs`` (its id, or ``<input>/<track>``)."""
    return any(seq_id == k or seq_id.startswith(k + "/") for k in inputs)


def group_name(seq_id: str) -> str:
    """HDF5-safe group name for a sequence id (``/`` would create nested groups)."""
    return quote(seq_id, safe=" -_.,()+=@:|[]")


def array_digest(h: "hashlib._Hash", name: str, arr: np.ndarray) -> None:
    """Feed a named array (dtype, shape, bytes) into a running hash."""
    a = np.ascontiguousarray(arr)
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")


def dataset_digest(h: "hashlib._Hash", name: str, dset: Any, slab: int = 4096) -> None:
    """Same bytes as ``array_digest`` of the whole array, read in slabs (h5py datasets)."""
    h.update(f"{name}|{np.dtype(dset.dtype).str}|{tuple(dset.shape)}|".encode())
    if len(dset.shape) == 0:
        h.update(np.ascontiguousarray(dset[()]).view(np.uint8).reshape(-1))
        return
    for s in range(0, dset.shape[0], slab):
        h.update(np.ascontiguousarray(dset[s:s + slab]).view(np.uint8).reshape(-1))


def dataset_sha256(d: Any, slab: int = 4096) -> str:
    """sha256 of a dataset's raw bytes, read in slabs (the per-field ``sha256`` attribute)."""
    h = hashlib.sha256()
    for s in range(0, d.shape[0], slab):
        h.update(np.ascontiguousarray(d[s:s + slab]).view(np.uint8).reshape(-1))
    return h.hexdigest()


def group_digest(group: Any) -> str:
    """Digest of a stored sequence group; equals ``sequence_digest`` of the arrays written."""
    h = hashlib.sha256()
    for name in sorted(group.keys()):
        dataset_digest(h, name, group[name])
    return h.hexdigest()


def sequence_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        array_digest(h, name, arrays[name])
    return h.hexdigest()


def content_fingerprint(seq_digests: dict[str, str]) -> str:
    """Fingerprint of a whole cache from its per-sequence digests (order independent)."""
    h = hashlib.sha256()
    for sid in sorted(seq_digests):
        h.update(f"{sid}={seq_digests[sid]};".encode())
    return h.hexdigest()


def validate_field(path: str, seq_id: str, name: str, arr: np.ndarray, n_frames: int,
                   num_joints: int | None, allow_nonfinite: bool = False) -> None:
    """Check one array against its FieldSpec; raise CacheError naming file, sequence and field."""
    where = f"{path}: sequence {seq_id!r}, field {name!r}"
    spec = FIELDS.get(name)
    if arr.ndim == 0 or arr.shape[0] != n_frames:
        raise CacheError(f"{where}: expected {n_frames} frames along axis 0, got shape {arr.shape}")
    if spec is None:
        return  # extra fields are allowed; they only need to be time-major
    if arr.dtype.name not in spec.dtypes:
        raise CacheError(f"{where}: dtype {arr.dtype.name} not allowed (expected one of {spec.dtypes})")
    if len(arr.shape) - 1 != len(spec.tail):
        raise CacheError(f"{where}: expected shape (T, {', '.join(map(str, spec.tail))}), got {arr.shape}")
    for dim, rule in zip(arr.shape[1:], spec.tail):
        if rule == "J" and num_joints is not None and dim != num_joints:
            raise CacheError(f"{where}: {dim} joints, but the cache's joint set has {num_joints}")
        if isinstance(rule, int) and dim != rule:
            raise CacheError(f"{where}: expected trailing size {rule}, got shape {arr.shape}")
    if spec.check_finite and not allow_nonfinite and arr.size:
        bad = ~np.isfinite(arr)
        if bad.any():
            frames = np.unique(np.nonzero(bad)[0])
            raise CacheError(f"{where}: {int(bad.sum())} NaN/inf values in frames "
                             f"{frames[:10].tolist()}{' ...' if frames.size > 10 else ''}")
