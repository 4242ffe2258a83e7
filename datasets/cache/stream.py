"""Appendable sequences (long videos) inside a writer's part folder; see ``CacheWriter``."""
from __future__ import annotations

import hashlib
import os
from typing import Any

import h5py
import numpy as np

from . import writer as _w
from .lock import discard_writes, is_disk_full
from .schema import (REQUIRED_FIELDS, SEQ_GROUP, CacheError, dataset_sha256, group_digest, group_name,
                     validate_field)

__all__ = ["SequenceStream"]


class SequenceStream:
    """An appendable sequence inside a writer's part folder (see ``CacheWriter.begin_sequence``).

    Every appended batch is also hashed in memory per field; ``commit`` re-reads the part file
    and refuses it unless the stored rows are exactly the appended ones, so zeroed or missing
    rows (a clobbered file, a lost write) can never be committed as valid.
    """

    CHUNK_ROWS = 64  # appendable datasets need chunks; 16-64 rows read well (ENVIRONMENT.md)

    def __init__(self, writer: "_w.CacheWriter", seq_id: str, attrs: dict[str, Any]) -> None:
        self.writer, self.seq_id, self.attrs = writer, seq_id, attrs
        self.final = writer._part_path(seq_id)
        self.tmp = _w._unique_tmp(self.final)
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
            raise CacheError(_w._disk_full_message(w.path, e, self._bytes)) from None
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
            _w._check_width(self.writer.path, self.writer.header, self.seq_id, k, a)
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
                if d.shape[0] != self.n or dataset_sha256(d) != h.hexdigest():
                    bad = f"{d.shape[0]} rows stored, {self.n} appended" if d.shape[0] != self.n \
                        else "stored rows differ from the appended ones"
                    self.abort()
                    raise CacheError(f"{w.path}: sequence {self.seq_id!r}, field {k!r}: {bad}; the "
                                     f"part file was changed by someone else - not committed")
                d.attrs["sha256"] = h.hexdigest()
            digest = group_digest(self._g)
            self._g.attrs.update(_w._encode_attrs(self.attrs))
            self._g.attrs.update({"seq_id": self.seq_id, "n_frames": self.n, "sha256": digest,
                                  "complete": True})
            self._f.close()
            _w._fsync_path(self.tmp)
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
            discard_writes(f)
        if f is not None and f.id.valid:
            try:
                f.close()  # closes our dataset handles too, before they are released below
            except Exception:  # the data is discarded anyway; only the handle must go
                pass
        self._ds, self._g = {}, None
        self.tmp.unlink(missing_ok=True)
        self.writer._streams.discard(self)
