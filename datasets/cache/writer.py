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

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from .schema import (SEQ_GROUP, CacheError, CacheHeader, CacheMismatchError, REQUIRED_FIELDS,
                     belongs_to, compare_headers, content_fingerprint, group_digest, group_name,
                     sequence_digest, validate_field)
from .lock import WriterLock, discard_writes, disk_full_message, is_disk_full
from .storage import StoragePolicy, DEFAULT_POLICY

__all__ = ["CacheWriter", "partial_dir"]

log = logging.getLogger(__name__)


def partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full_message(path: Path, err: BaseException, pending_bytes: int = 0) -> str:
    return disk_full_message(path, partial_dir(path), pending_bytes, err)


def _unique_tmp(final: Path) -> Path:
    """A temporary name no other process or stream can share (never fixed by sequence id)."""
    return final.with_name(f"{final.stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def field_sha256(arr: np.ndarray) -> str:
    """sha256 of one field's raw bytes (stored as the dataset's ``sha256`` attribute)."""
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)).hexdigest()


def _check_width(path: Path, header: CacheHeader, seq_id: str, name: str, arr: np.ndarray) -> None:
    """The header's ``source.feature_dim`` must be the stored width (0/absent: not recorded)."""
    dim = int(header.source.get("feature_dim") or 0) if isinstance(header.source, dict) else 0
    if name == "features" and dim and arr.ndim == 2 and arr.shape[1] != dim:
        raise CacheError(f"{path}: sequence {seq_id!r}, field 'features': width {arr.shape[1]}, but "
                         f"the header's source.feature_dim is {dim}")


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
        # The lock comes first: nothing (not even --overwrite) touches the cache or its parts
        # while another writer holds it.
        self._lock = WriterLock(self.path)
        self._lock.acquire()
        self._streams: weakref.WeakSet = weakref.WeakSet()  # open SequenceStreams
        try:
            self._open(overwrite)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, overwrite: bool) -> None:
        if overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.path.unlink(missing_ok=True)
        self.changed_inputs: list[str] = []
        self._fps = dict(self.header.input_fingerprints)
        self._existing: dict[str, str] = self._read_existing()
        self._committed: dict[str, str] = {}
        self.parts.mkdir(parents=True, exist_ok=True)
        hdr = self.parts / "header.json"
        if hdr.exists():
            self._reconcile(CacheHeader.from_json(hdr.read_text()), f"an interrupted run left "
                            f"{self.parts}", "to discard it")
        self._committed.update(self._scan_parts())
        if self.changed_inputs:
            for sid in [s for s in self._committed if self._stale(s)]:
                self._part_path(sid).unlink(missing_ok=True)
                del self._committed[sid]
            self._existing = {s: d for s, d in self._existing.items() if not self._stale(s)}
            log.warning("%s: input(s) changed since they were extracted: %s; re-extracting only "
                        "their sequences", self.path, ", ".join(self.changed_inputs))
        if self._fps:  # what the cache will record: every input it holds sequences of
            self.header = dataclasses.replace(self.header, input_fingerprints=self._fps)
        tmp = _unique_tmp(hdr)
        tmp.write_text(self.header.to_json())
        os.replace(tmp, hdr)

    def _reconcile(self, old: CacheHeader, what: str, fix: str) -> None:
        """Refuse other settings (naming them); note changed inputs; keep old inputs' prints."""
        diffs, changed = compare_headers(old, self.header)
        if diffs:
            raise CacheMismatchError(f"{self.path}: {what} with different settings: "
                                     f"{'; '.join(diffs)}. Use overwrite=True (--overwrite) {fix}")
        self.changed_inputs = sorted(set(self.changed_inputs) | set(changed))
        if self._fps:
            self._fps = {**old.input_fingerprints, **self._fps}

    def _stale(self, seq_id: str) -> bool:
        return seq_id in self.changed_inputs or (
            seq_id not in self._fps and belongs_to(seq_id, self.changed_inputs))

    def close(self) -> None:
        """Drop unfinished streams (closing their HDF5 files now, not at interpreter exit)
        and release the writer lock. Committed parts stay for a resume."""
        for st in list(self._streams):
            st.abort()
        self._lock.release()

    # -- state ---------------------------------------------------------------------------
    def _read_existing(self) -> dict[str, str]:
        """Digests of sequences already in a finalised cache (which must match our header)."""
        if not self.path.exists():
            return {}
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise CacheError(f"{self.path}: the existing cache is not a readable HDF5 file ({e}); it "
                             f"is truncated or corrupt - move it away or use --overwrite") from None
        with f:
            self._reconcile(CacheHeader.from_attrs(f.attrs, str(self.path)), "exists", "to replace it")
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
            _check_width(self.path, self.header, seq_id, name, arr)
        digest = sequence_digest(arrays)
        final = self._part_path(seq_id)
        tmp = _unique_tmp(final)
        try:
            with h5py.File(tmp, "w") as f:
                g = f.create_group(SEQ_GROUP).create_group(group_name(seq_id))
                for k, arr in arrays.items():
                    self.policy.create(g, k, arr).attrs["sha256"] = field_sha256(arr)
                g.attrs.update(_encode_attrs(attrs or {}))
                g.attrs.update({"seq_id": seq_id, "n_frames": n, "sha256": digest, "complete": True})
            _fsync_path(tmp)
            os.replace(tmp, final)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise CacheError(_disk_full_message(self.path, e, sum(a.nbytes for a in arrays.values()))) from None
            raise CacheError(f"{self.path}: writing sequence {seq_id!r} failed: {e}") from e
        self._committed[seq_id] = digest

    def begin_sequence(self, seq_id: str, attrs: dict[str, Any] | None = None) -> "SequenceStream":
        """Start an appendable sequence (long videos): ``append`` batches, then ``commit``.
        Memory stays bounded by one batch; nothing is visible until ``commit`` succeeds."""
        if self.has(seq_id):
            raise CacheError(f"{self.path}: sequence {seq_id!r} was already written")
        from .stream import SequenceStream

        return SequenceStream(self, seq_id, attrs or {})

    def _part_path(self, seq_id: str) -> Path:
        return self.parts / ("seq-" + hashlib.sha1(seq_id.encode()).hexdigest()[:20] + ".h5")

    # -- finalising ----------------------------------------------------------------------
    def finalize(self) -> Path:
        """Merge the finalised cache and all parts into one file, atomically."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        digests: dict[str, str] = {}
        out = None
        try:
            out = h5py.File(tmp, "w")
            seqs = out.create_group(SEQ_GROUP)
            sources: list[Path] = ([self.path] if self.path.exists() else [])
            sources += sorted(self.parts.glob("seq-*.h5"))
            for src in sources:
                with h5py.File(src, "r") as f:
                    for gname, g in f[SEQ_GROUP].items():
                        sid = str(g.attrs["seq_id"])
                        if sid in digests or (src == self.path and sid not in self._existing):
                            continue  # finalised copy wins over a leftover part; stale inputs go
                        _copy_group(g, seqs, gname, self.policy)
                        digests[sid] = str(g.attrs["sha256"])
            out.attrs.update(self.header.to_attrs())
            out.attrs["content_fingerprint"] = content_fingerprint(digests)
            out.attrs["num_sequences"] = len(digests)
            out.close()
            _fsync_path(tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:  # h5py raises some write failures as RuntimeError
            full = is_disk_full(e)
            if out is not None and out.id.valid:
                if full:
                    discard_writes(out)  # the closing flush must not hit the full disk again
                try:
                    out.close()
                except Exception:
                    pass
            tmp.unlink(missing_ok=True)
            if full:
                raise CacheError(_disk_full_message(self.path, e)) from None
            if isinstance(e, RuntimeError):
                raise CacheError(f"{self.path}: finalize failed: {e}") from e
            raise
        shutil.rmtree(self.parts, ignore_errors=True)
        self._existing, self._committed = digests, {}
        return self.path

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            try:
                lock.release()
            except Exception:  # interpreter shutdown; the OS drops the lock with the process
                pass

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.finalize()
        finally:
            self.close()


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
