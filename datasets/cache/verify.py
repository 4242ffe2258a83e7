"""``cache info`` and ``cache verify``: describe a cache, and check it completely.

verify checks: schema and header, every sequence group (marked complete, frame counts,
field shapes/dtypes against the joint set, widths against the header's ``source``), NaN/inf,
every stored array against its own sha256 (so a mismatch names the field) and the
per-sequence digests (bit rot or edits since writing), and the content fingerprint; it also
reports left-over parts of an interrupted writer. ``deep`` additionally re-reads every
committed part of an interrupted writer the same way and checks that ``frame_index`` rises.
Problems are collected, not raised, so one run lists all of them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .reader import Cache
from .schema import (REQUIRED_FIELDS, SEQ_GROUP, CacheError, CacheHeader, content_fingerprint,
                     dataset_sha256, group_digest, validate_field)
from .writer import decode_attrs, partial_dir

__all__ = ["cache_info", "verify_cache", "VerifyResult"]


def cache_info(path: str | Path) -> dict[str, Any]:
    """Sequences, frames, fields and provenance of a cache (small; JSON-serialisable)."""
    c = Cache(path)
    fields: dict[str, int] = {}
    subjects: dict[str, int] = {}
    for info in c:
        for f in info.fields:
            fields[f] = fields.get(f, 0) + 1
        subjects[info.subject] = subjects.get(info.subject, 0) + info.n_frames
    with h5py.File(c.path, "r") as f:
        g = f[SEQ_GROUP][next(iter(f[SEQ_GROUP]))] if len(f[SEQ_GROUP]) else None
        shapes = {k: {"dtype": str(d.dtype), "per_frame_shape": list(d.shape[1:])}
                  for k, d in (g.items() if g is not None else [])}
    return {
        "path": str(c.path), "kind": c.header.kind, "dataset": c.header.dataset,
        "joint_set": c.header.joint_set, "sequences": len(c), "frames": c.total_frames,
        "frames_per_subject": subjects, "fields": {k: {"sequences": n, **shapes.get(k, {})}
                                                   for k, n in sorted(fields.items())},
        "source": c.header.source, "inputs_fingerprint": c.header.inputs_fingerprint,
        "content_fingerprint": c.content_fingerprint, "units": c.header.units,
        "extra": c.header.extra, "poselift_version": c.poselift_version, "created": c.created,
        "file_bytes": c.path.stat().st_size,
    }


@dataclass
class VerifyResult:
    path: str
    sequences: int = 0
    frames: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "sequences": self.sequences, "frames": self.frames,
                "problems": self.problems, "warnings": self.warnings}


def verify_cache(path: str | Path, *, check_digests: bool = True, allow_nonfinite: bool = False,
                 expect_fingerprint: str | None = None, deep: bool = False) -> VerifyResult:
    """Check a cache completely; see the module docstring for what is checked."""
    path = Path(path)
    res = VerifyResult(str(path))
    parts = partial_dir(path)
    if deep and parts.exists():
        _verify_parts(path, parts, allow_nonfinite, res)
    if parts.exists():
        n = len(list(parts.glob("seq-*.h5")))
        msg = (f"{parts}: an interrupted writer left {n} committed sequence(s) that are not in the "
               f"cache yet; re-run the command that wrote it, or `poselift-cache finalize {path}`")
        (res.warnings if path.exists() else res.problems).append(msg)
    if not path.exists():
        res.problems.append(f"{path}: no such cache file")
        return res
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        res.problems.append(f"{path}: not a readable HDF5 file ({e}); truncated or corrupt")
        return res
    with f:
        try:
            header = CacheHeader.from_attrs(f.attrs, str(path))
        except CacheError as e:
            res.problems.append(str(e))
            return res
        n_joints = None
        if header.joint_set:
            from ..joints import get_joint_set

            try:
                n_joints = get_joint_set(header.joint_set).num_joints
            except KeyError as e:
                res.problems.append(f"{path}: {e.args[0]}")
        grp = f.get(SEQ_GROUP)
        if grp is None:
            res.problems.append(f"{path}: group '/{SEQ_GROUP}' is missing")
            return res
        digests = {}
        for gname, g in grp.items():
            _verify_sequence(path, gname, g, n_joints, check_digests, allow_nonfinite, res, digests,
                             REQUIRED_FIELDS.get(header.kind, ()), header, deep)
        stored = str(f.attrs.get("content_fingerprint", ""))
        if len(digests) == len(grp) and content_fingerprint(digests) != stored:
            res.problems.append(f"{path}: content fingerprint {stored[:16]}... does not match the "
                                f"sequences' digests ({content_fingerprint(digests)[:16]}...)")
        if expect_fingerprint and stored != expect_fingerprint:
            res.problems.append(f"{path}: content fingerprint {stored[:16]}... differs from the "
                                f"expected {expect_fingerprint[:16]}...")
    return res


def _verify_parts(path: Path, parts: Path, allow_nonfinite: bool, res: VerifyResult) -> None:
    """--deep: the committed parts of an interrupted writer get the same checks as the cache."""
    hdr = parts / "header.json"
    header = CacheHeader.from_json(hdr.read_text()) if hdr.exists() else None
    n_joints = None
    if header is not None and header.joint_set:
        from ..joints import get_joint_set

        n_joints = get_joint_set(header.joint_set).num_joints
    required = REQUIRED_FIELDS.get(header.kind, ()) if header is not None else ()
    for part in sorted(parts.glob("seq-*.h5")):
        sub = VerifyResult(str(part))
        try:
            with h5py.File(part, "r") as f:
                for gname, g in f[SEQ_GROUP].items():
                    _verify_sequence(part, gname, g, n_joints, True, allow_nonfinite, sub, {},
                                     required, header, True)
        except (OSError, KeyError) as e:
            sub.problems.append(f"{part}: unreadable committed part ({e})")
        res.problems += sub.problems


def _check_against_header(path: Path, sid: str, name: str, d: h5py.Dataset,
                          header: CacheHeader | None) -> list[str]:
    """Widths and dtypes the header's ``source`` promises must be the stored ones."""
    src = header.source if header is not None and isinstance(header.source, dict) else {}
    where = f"{path}: sequence {sid!r}, field {name!r}"
    out = []
    if name == "features":
        dim = int(src.get("feature_dim") or 0)
        if dim and (d.ndim != 2 or d.shape[1] != dim):
            out.append(f"{where}: width {d.shape[1] if d.ndim == 2 else d.shape}, but the header's "
                       f"source.feature_dim is {dim}")
        if src.get("dtype") and str(d.dtype) != src["dtype"]:
            out.append(f"{where}: dtype {d.dtype}, but the header's source.dtype is {src['dtype']}")
    if name == "keypoints" and src.get("num_joints") and d.ndim == 3 and d.shape[1] != int(src["num_joints"]):
        out.append(f"{where}: {d.shape[1]} joints, but the header's source.num_joints is "
                   f"{src['num_joints']}")
    return out


def _verify_sequence(path: Path, gname: str, g: h5py.Group, n_joints: int | None, check_digests: bool,
                     allow_nonfinite: bool, res: VerifyResult, digests: dict[str, str],
                     required: tuple[str, ...] = (), header: CacheHeader | None = None,
                     deep: bool = False) -> None:
    attrs = decode_attrs(g.attrs.items())
    sid = str(attrs.get("seq_id", gname))
    if not attrs.get("complete"):
        res.problems.append(f"{path}: sequence {sid!r} is not marked complete")
        return
    n = int(attrs.get("n_frames", -1))
    res.sequences += 1
    res.frames += max(n, 0)
    for name in required:
        if name not in g:
            res.problems.append(f"{path}: sequence {sid!r}: required field {name!r} is missing")
    for name, d in g.items():
        if not isinstance(d, h5py.Dataset):
            res.problems.append(f"{path}: sequence {sid!r}: {name!r} is not a dataset")
            continue
        try:
            if d.ndim == 0 or d.shape[0] != n:
                raise CacheError(f"{path}: sequence {sid!r}, field {name!r}: shape {d.shape}, but the "
                                 f"sequence has {n} frames")
            # Validate in slabs so a huge sequence never loads whole.
            for s in range(0, n, 65536):
                slab = d[s:s + 65536]
                validate_field(str(path), sid, name, slab, len(slab), n_joints, allow_nonfinite)
            res.problems += _check_against_header(path, sid, name, d, header)
            want = d.attrs.get("sha256")  # absent in caches written before per-field digests
            if check_digests and want is not None and dataset_sha256(d) != str(want):
                res.problems.append(f"{path}: sequence {sid!r}, field {name!r}: stored data differs "
                                    f"from its sha256 recorded at writing (corrupted or edited)")
            if deep and name == "frame_index" and n > 1:
                fi = d[()]
                bad = np.flatnonzero(np.diff(fi) <= 0)
                if bad.size:
                    res.problems.append(f"{path}: sequence {sid!r}, field 'frame_index': not "
                                        f"increasing at row {int(bad[0]) + 1} ({int(fi[bad[0]])} then "
                                        f"{int(fi[bad[0] + 1])})")
        except CacheError as e:
            res.problems.append(str(e))
        except OSError as e:
            res.problems.append(f"{path}: sequence {sid!r}, field {name!r}: unreadable ({e})")
    if check_digests:
        try:
            got = group_digest(g)
        except OSError as e:
            res.problems.append(f"{path}: sequence {sid!r}: unreadable data ({e})")
            return
        if got != attrs.get("sha256"):
            res.problems.append(f"{path}: sequence {sid!r}: data digest differs from the one recorded "
                                f"at writing (changed or corrupted since)")
        digests[sid] = str(attrs.get("sha256"))


def format_info(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}: {info['kind']} cache of {info['dataset']!r}, joint set "
             f"{info['joint_set']}, {info['sequences']} sequences, {info['frames']} frames, "
             f"{info['file_bytes'] / 2**20:.1f} MiB"]
    for k, v in info["fields"].items():
        lines.append(f"  field {k:<16} {v.get('dtype', '?'):<8} per frame {v.get('per_frame_shape')} "
                     f"in {v['sequences']} sequences")
    lines.append(f"  frames per subject: {json.dumps(info['frames_per_subject'])}")
    lines.append(f"  source: {json.dumps(info['source'])}")
    lines.append(f"  inputs fingerprint {info['inputs_fingerprint'][:16]}...  content fingerprint "
                 f"{info['content_fingerprint'][:16]}...")
    lines.append(f"  written by poselift {info['poselift_version']} at {info['created']}")
    return "\n".join(lines)
