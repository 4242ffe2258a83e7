"""Crash-safe cache writer: every sequence is committed atomically, re-runs resume.

How atomicity works (HDF5 has no journal, so a killed process can corrupt an open file):

* While writing, ``<cache>.partial/`` holds ``header.json`` and one small HDF5 file per
  committed sequence. A sequence is written to ``*.tmp``, flushed, fsync'ed and then
  ``os.replace``'d to its final name: after a crash it is either complete or absent.
* ``finalize()`` copies the existing cache (if any) and all parts into ``<cache>.tmp``,
  writes the root attributes (with the content fingerprint), fsyncs and renames it over
  ``<cache>``; only then is the partial folder removed. A crash during finalize leaves
  the old cache and all parts in place.
* Re-running with the same header skips every sequence found in the cache or the parts.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from .schema import (SEQ_GROUP, CacheError, CacheHeader, CacheMismatchError, REQUIRED_FIELDS,
                     content_fingerprint, diff_identity, group_digest, group_name, sequence_digest,
                     validate_field)
from .storage import StoragePolicy, DEFAULT_POLICY

__all__ = ["CacheWriter", "partial_dir"]


def partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full_message(path: Path, err: OSError) -> str:
    return (f"{path}: no space left on the device while writing ({err}); committed sequences are "
            f"kept in {partial_dir(path)} - free space and re-run the same command to resume")


class CacheWriter:
    """Write sequences into the cache at ``path``.

    Usage::

        with CacheWriter(path, header) as w:
            for seq in seqs:
                if w.has(seq.id):
                    continue
                w.write_sequence(seq.id, {"keypoints": kp, ...}, {"subject": "S1", ...})

    Leaving the ``with`` block normally finalises the cache; an exception leaves the
    committed parts for a later resume.
    """

    def __init__(self, path: str | os.PathLike, header: CacheHeader, *,
                 policy: StoragePolicy = DEFAULT_POLICY, overwrite: bool = False,
                 allow_nonfinite: bool = False) -> None:
        self.path = Path(path)
        self.header = header
        self.policy = policy
        self.allow_nonfinite = allow_nonfinite
        self.parts = partial_dir(self.path)
        self._num_joints: int | None = None
        if header.joint_set:
            from ..joints import get_joint_set

            self._num_joints = get_joint_set(header.joint_set).num_joints
        if overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.path.unlink(missing_ok=True)
        self._existing: dict[str, str] = self._read_existing()
        self._committed: dict[str, str] = {}
        self.parts.mkdir(parents=True, exist_ok=True)
        hdr = self.parts / "header.json"
        if hdr.exists():
            old = CacheHeader.from_json(hdr.read_text())
            diffs = diff_identity(old.identity(), header.identity())
            if diffs:
                raise CacheMismatchError(
                    f"{self.path}: an interrupted run with different settings left {self.parts}; "
                    f"differences: {'; '.join(diffs)}. Use overwrite=True (--overwrite) to discard it")
        else:
            tmp = hdr.with_suffix(".tmp")
            tmp.write_text(header.to_json())
            os.replace(tmp, hdr)
        self._committed.update(self._scan_parts())

    # -- state ---------------------------------------------------------------------------
    def _read_existing(self) -> dict[str, str]:
        """Digests of sequences already in a finalised cache (which must match our header)."""
        if not self.path.exists():
            return {}
        with h5py.File(self.path, "r") as f:
            old = CacheHeader.from_attrs(f.attrs, str(self.path))
            diffs = diff_identity(old.identity(), self.header.identity())
            if diffs:
                raise CacheMismatchError(f"{self.path}: exists with different settings: "
                                         f"{'; '.join(diffs)}. Use overwrite=True (--overwrite)")
            grp = f.get(SEQ_GROUP)
            if grp is None:
                return {}
            return {str(g.attrs["seq_id"]): str(g.attrs["sha256"]) for g in grp.values()}

    def _scan_parts(self) -> dict[str, str]:
        found = {}
        for p in sorted(self.parts.glob("seq-*.h5")):
            try:
                with h5py.File(p, "r") as f:
                    g = f[SEQ_GROUP]
                    for sub in g.values():
                        found[str(sub.attrs["seq_id"])] = str(sub.attrs["sha256"])
            except (OSError, KeyError):
                # A part can only be damaged if the disk lied about fsync; drop it, it is redone.
                p.unlink(missing_ok=True)
        for p in self.parts.glob("*.tmp"):
            p.unlink(missing_ok=True)  # an interrupted, uncommitted sequence
        return found

    def done(self) -> set[str]:
        """Ids of sequences already committed (finalised or in parts)."""
        return set(self._existing) | set(self._committed)

    def has(self, seq_id: str) -> bool:
        return seq_id in self._existing or seq_id in self._committed

    # -- writing -------------------------------------------------------------------------
    def write_sequence(self, seq_id: str, arrays: dict[str, np.ndarray],
                       attrs: dict[str, Any] | None = None) -> None:
        """Validate and atomically commit one sequence.

        ``arrays`` maps field names (see ``schema.FIELDS``) to time-major arrays of equal
        length T; ``attrs`` holds per-sequence metadata (subject, action, camera, fps,
        image_size, ...; dicts and lists are stored as JSON).
        """
        if self.has(seq_id):
            raise CacheError(f"{self.path}: sequence {seq_id!r} was already written")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        missing = [k for k in REQUIRED_FIELDS[self.header.kind] if k not in arrays]
        if missing:
            raise CacheError(f"{self.path}: sequence {seq_id!r} lacks required field(s) {missing} "
                             f"for a {self.header.kind!r} cache")
        n = len(next(iter(arrays.values())))
        if n == 0:
            raise CacheError(f"{self.path}: sequence {seq_id!r} has zero frames")
        for name, arr in arrays.items():
            validate_field(str(self.path), seq_id, name, arr, n, self._num_joints,
                           self.allow_nonfinite)
        digest = sequence_digest(arrays)
        final = self._part_path(seq_id)
        tmp = final.with_suffix(".tmp")
        try:
            with h5py.File(tmp, "w") as f:
                g = f.create_group(SEQ_GROUP).create_group(group_name(seq_id))
                for k, arr in arrays.items():
                    self.policy.create(g, k, arr)
                g.attrs.update(_encode_attrs(attrs or {}))
                g.attrs.update({"seq_id": seq_id, "n_frames": n, "sha256": digest, "complete": True})
            _fsync_path(tmp)
            os.replace(tmp, final)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC or "No space" in str(e):
                raise CacheError(_disk_full_message(self.path, e)) from e
            raise CacheError(f"{self.path}: writing sequence {seq_id!r} failed: {e}") from e
        self._committed[seq_id] = digest

    def begin_sequence(self, seq_id: str, attrs: dict[str, Any] | None = None) -> "SequenceStream":
        """Start an appendable sequence (long videos): ``append`` batches, then ``commit``.
        Memory stays bounded by one batch; nothing is visible until ``commit`` succeeds."""
        if self.has(seq_id):
            raise CacheError(f"{self.path}: sequence {seq_id!r} was already written")
        return SequenceStream(self, seq_id, attrs or {})

    def _part_path(self, seq_id: str) -> Path:
        return self.parts / ("seq-" + hashlib.sha1(seq_id.encode()).hexdigest()[:20] + ".h5")

    # -- finalising ----------------------------------------------------------------------
    def finalize(self) -> Path:
        """Merge the finalised cache and all parts into one file, atomically."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        digests: dict[str, str] = {}
        try:
            with h5py.File(tmp, "w") as out:
                seqs = out.create_group(SEQ_GROUP)
                sources: list[Path] = ([self.path] if self.path.exists() else [])
                sources += sorted(self.parts.glob("seq-*.h5"))
                for src in sources:
                    with h5py.File(src, "r") as f:
                        for gname, g in f[SEQ_GROUP].items():
                            sid = str(g.attrs["seq_id"])
                            if sid in digests:
                                continue  # finalised copy wins over a leftover part
                            _copy_group(g, seqs, gname, self.policy)
                            digests[sid] = str(g.attrs["sha256"])
                out.attrs.update(self.header.to_attrs())
                out.attrs["content_fingerprint"] = content_fingerprint(digests)
                out.attrs["num_sequences"] = len(digests)
            _fsync_path(tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC or "No space" in str(e):
                raise CacheError(_disk_full_message(self.path, e)) from e
            raise
        shutil.rmtree(self.parts, ignore_errors=True)
        self._existing, self._committed = digests, {}
        return self.path

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()


class SequenceStream:
    """An appendable sequence inside a writer's part folder (see ``CacheWriter.begin_sequence``)."""

    CHUNK_ROWS = 64  # appendable datasets need chunks; 16-64 rows read well (ENVIRONMENT.md)

    def __init__(self, writer: CacheWriter, seq_id: str, attrs: dict[str, Any]) -> None:
        self.writer, self.seq_id, self.attrs = writer, seq_id, attrs
        self.final = writer._part_path(seq_id)
        self.tmp = self.final.with_suffix(".tmp")
        self._f = h5py.File(self.tmp, "w")
        self._g = self._f.create_group(SEQ_GROUP).create_group(group_name(seq_id))
        self.n = 0

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append a batch of frames; every field must be present in every batch."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        b = len(next(iter(arrays.values())))
        if self.n and set(arrays) != set(self._g.keys()):
            raise CacheError(f"{self.writer.path}: sequence {self.seq_id!r}: batch fields "
                             f"{sorted(arrays)} differ from earlier batches {sorted(self._g.keys())}")
        for k, a in arrays.items():
            validate_field(str(self.writer.path), self.seq_id, k, a, b, self.writer._num_joints,
                           self.writer.allow_nonfinite)
            if k not in self._g:
                self._g.create_dataset(k, shape=(0,) + a.shape[1:], maxshape=(None,) + a.shape[1:],
                                       dtype=a.dtype, chunks=(self.CHUNK_ROWS,) + a.shape[1:])
            d = self._g[k]
            d.resize(self.n + b, axis=0)
            d[self.n:self.n + b] = a
        self.n += b

    def commit(self) -> None:
        w = self.writer
        missing = [k for k in REQUIRED_FIELDS[w.header.kind] if k not in self._g]
        if self.n == 0 or missing:
            self.abort()
            raise CacheError(f"{w.path}: sequence {self.seq_id!r} has "
                             + ("zero frames" if self.n == 0 else f"no field(s) {missing}"))
        try:
            digest = group_digest(self._g)
            self._g.attrs.update(_encode_attrs(self.attrs))
            self._g.attrs.update({"seq_id": self.seq_id, "n_frames": self.n, "sha256": digest,
                                  "complete": True})
            self._f.close()
            _fsync_path(self.tmp)
            os.replace(self.tmp, self.final)
        except OSError as e:
            self.abort()
            if e.errno == errno.ENOSPC or "No space" in str(e):
                raise CacheError(_disk_full_message(w.path, e)) from e
            raise
        w._committed[self.seq_id] = digest

    def abort(self) -> None:
        """Drop an unfinished sequence (for example after a decode error mid-video)."""
        if self._f.id.valid:
            self._f.close()
        self.tmp.unlink(missing_ok=True)


def _copy_group(src: h5py.Group, dst_parent: h5py.Group, name: str, policy: StoragePolicy) -> None:
    """Copy one sequence group, re-laying datasets out with ``policy`` in bounded slabs."""
    g = dst_parent.create_group(name)
    for k, d in src.items():
        policy.copy(d, g, k)
    g.attrs.update(dict(src.attrs))


def _encode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, (dict, list, tuple)) and not _is_numeric_seq(v):
            out[k] = "json:" + json.dumps(v, sort_keys=True)
        else:
            out[k] = v
    return out


def _is_numeric_seq(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, (int, float, np.integer, np.floating)) for x in v)


def decode_attrs(attrs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Inverse of the attribute encoding used by the writer."""
    out = {}
    for k, v in attrs:
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str) and v.startswith("json:"):
            v = json.loads(v[5:])
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
