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
from .lock import WriterLock, disk_full_message, is_disk_full
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
        self._streams: "weakref.WeakSet[SequenceStream]" = weakref.WeakSet()
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
                            if sid in digests or (src == self.path and sid not in self._existing):
                                continue  # finalised copy wins over a leftover part; stale inputs go
                            _copy_group(g, seqs, gname, self.policy)
                            digests[sid] = str(g.attrs["sha256"])
                out.attrs.update(self.header.to_attrs())
                out.attrs["content_fingerprint"] = content_fingerprint(digests)
                out.attrs["num_sequences"] = len(digests)
            _fsync_path(tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise CacheError(_disk_full_message(self.path, e)) from None
            raise
        shutil.rmtree(self.parts, ignore_errors=True)
        self._existing, self._committed = digests, {}
        return self.path

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.finalize()
        finally:
            self.close()


class SequenceStream:
    """An appendable sequence inside a writer's part folder (see ``CacheWriter.begin_sequence``).

    Every appended batch is also hashed in memory per field; ``commit`` re-reads the part file
    and refuses it unless the stored rows are exactly the appended ones, so zeroed or missing
    rows (a clobbered file, a lost write) can never be committed as valid.
    """

    CHUNK_ROWS = 64  # appendable datasets need chunks; 16-64 rows read well (ENVIRONMENT.md)

    def __init__(self, writer: CacheWriter, seq_id: str, attrs: dict[str, Any]) -> None:
        self.writer, self.seq_id, self.attrs = writer, seq_id, attrs
        self.final = writer._part_path(seq_id)
        self.tmp = _unique_tmp(self.final)
        self._hash: dict[str, Any] = {}
        self._ds: dict[str, h5py.Dataset] = {}  # kept open: see append
        self._bytes = 0
        self.n = 0
        try:
            self._f = h5py.File(self.tmp, "w")
            self._g = self._f.create_group(SEQ_GROUP).create_group(group_name(seq_id))
        except OSError as e:
            self._f = None
            self._fail(e)
        writer._streams.add(self)

    def _fail(self, e: Exception) -> None:
        """Drop the part file and raise one CacheError (the disk-full message if it is that)."""
        full = is_disk_full(e)
        self.abort(truncate=full)
        w = self.writer
        if full:
            raise CacheError(_disk_full_message(w.path, e, self._bytes)) from None
        raise CacheError(f"{w.path}: writing sequence {self.seq_id!r} failed: {e}") from e

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append a batch of frames; every field must be present in every batch."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        b = len(next(iter(arrays.values())))
        if self.n and set(arrays) != set(self._hash):
            raise CacheError(f"{self.writer.path}: sequence {self.seq_id!r}: batch fields "
                             f"{sorted(arrays)} differ from earlier batches {sorted(self._hash)}")
        for k, a in arrays.items():
            validate_field(str(self.writer.path), self.seq_id, k, a, b, self.writer._num_joints,
                           self.writer.allow_nonfinite)
            _check_width(self.writer.path, self.writer.header, self.seq_id, k, a)
        try:
            for k, a in arrays.items():
                if k not in self._ds:
                    self._ds[k] = self._g.create_dataset(
                        k, shape=(0,) + a.shape[1:], maxshape=(None,) + a.shape[1:], dtype=a.dtype,
                        chunks=(self.CHUNK_ROWS,) + a.shape[1:])
                d = self._ds[k]
                d.resize(self.n + b, axis=0)
                d[self.n:self.n + b] = a
                self._hash.setdefault(k, hashlib.sha256()).update(
                    np.ascontiguousarray(a, dtype=d.dtype).view(np.uint8).reshape(-1))
                self._bytes += a.nbytes
            # HDF5 writes chunks lazily, and a failed write while a dataset handle is being
            # released is only printed ("Exception ignored"), never raised: flush every batch
            # so a full disk surfaces here, as an error we can handle.
            self._f.flush()
        except (OSError, RuntimeError) as e:  # h5py raises some write failures as RuntimeError
            self._fail(e)
        self.n += b

    def commit(self) -> None:
        w = self.writer
        missing = [k for k in REQUIRED_FIELDS[w.header.kind] if k not in self._hash]
        if self.n == 0 or missing:
            self.abort()
            raise CacheError(f"{w.path}: sequence {self.seq_id!r} has "
                             + ("zero frames" if self.n == 0 else f"no field(s) {missing}"))
        try:
            self._f.flush()
            for k, h in self._hash.items():
                d = self._ds[k]
                if d.shape[0] != self.n or _dataset_sha256(d) != h.hexdigest():
                    bad = f"{d.shape[0]} rows stored, {self.n} appended" if d.shape[0] != self.n \
                        else "stored rows differ from the appended ones"
                    self.abort()
                    raise CacheError(f"{w.path}: sequence {self.seq_id!r}, field {k!r}: {bad}; the "
                                     f"part file was changed by someone else - not committed")
                d.attrs["sha256"] = h.hexdigest()
            digest = group_digest(self._g)
            self._g.attrs.update(_encode_attrs(self.attrs))
            self._g.attrs.update({"seq_id": self.seq_id, "n_frames": self.n, "sha256": digest,
                                  "complete": True})
            self._f.close()
            _fsync_path(self.tmp)
            os.replace(self.tmp, self.final)
        except (OSError, RuntimeError) as e:  # h5py raises some write failures as RuntimeError
            self._fail(e)
        w._committed[self.seq_id] = digest
        w._streams.discard(self)

    def abort(self, truncate: bool = False) -> None:
        """Drop an unfinished sequence (for example after a decode error mid-video).

        The HDF5 file is closed here, deterministically: an h5py file left open after a write
        error is otherwise flushed again at interpreter exit, into the same full disk (noise,
        then a segfault). With ``truncate`` (disk full) the closing flush goes to /dev/null.
        """
        f, self._f = getattr(self, "_f", None), None
        if truncate and f is not None and f.id.valid:
            _discard_writes(f)
        if f is not None and f.id.valid:
            try:
                f.close()  # closes our dataset handles too, before they are released below
            except Exception:  # the data is discarded anyway; only the handle must go
                pass
        self._ds, self._g = {}, None
        self.tmp.unlink(missing_ok=True)
        self.writer._streams.discard(self)


def _discard_writes(f: h5py.File) -> None:
    """Point the file's descriptor at /dev/null: HDF5's closing flush of a file we are about to
    delete then succeeds instead of failing again on the full disk (HDF5 cannot close a file
    without flushing it)."""
    try:
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, int(fd))
        finally:
            os.close(null)
    except Exception:  # not the sec2 driver: fall back to a plain close
        pass


def _dataset_sha256(d: h5py.Dataset, slab: int = 4096) -> str:
    h = hashlib.sha256()
    for s in range(0, d.shape[0], slab):
        h.update(np.ascontiguousarray(d[s:s + slab]).view(np.uint8).reshape(-1))
    return h.hexdigest()


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
