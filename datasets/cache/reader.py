"""Read-only access to a finalised cache: header checks, a small in-memory index, lazy reads.

The HDF5 file is opened lazily in the process that reads (first ``read``) and re-opened
after a fork, so a ``Cache`` can be handed to DataLoader workers safely.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from .schema import (SEQ_GROUP, CacheError, CacheHeader, CacheMismatchError, IncompleteCacheError,
                     group_name)
from .writer import decode_attrs, partial_dir

__all__ = ["Cache", "SequenceInfo", "open_cache", "common_sequences"]


@dataclass(frozen=True)
class SequenceInfo:
    """Index entry of one sequence: id, length, field names and decoded attributes."""

    seq_id: str
    n_frames: int
    fields: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return str(self.attrs.get("subject", ""))

    @property
    def action(self) -> str:
        return str(self.attrs.get("action", ""))

    @property
    def camera(self) -> str:
        return str(self.attrs.get("camera", ""))


class Cache:
    """A finalised poselift cache.

    Args:
        path: the ``.h5`` file.
        kind, dataset, joint_set, content_fingerprint: optional expectations; any
            difference raises ``CacheMismatchError`` listing every differing item.
    """

    def __init__(self, path: str | os.PathLike, *, kind: str | None = None,
                 dataset: str | None = None, joint_set: str | None = None,
                 content_fingerprint: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            parts = partial_dir(self.path)
            if parts.exists():
                n = len(list(parts.glob("seq-*.h5")))
                raise IncompleteCacheError(
                    f"{self.path}: the writer did not finish (killed or failed); {n} committed "
                    f"sequence(s) are kept in {parts}. Re-run the same command to resume, or "
                    f"`poselift-cache finalize {self.path}` to use what is there")
            raise CacheError(f"{self.path}: no such cache file")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise CacheError(f"{self.path}: not a readable HDF5 file ({e}); it may be truncated "
                             f"or corrupt") from e
        with f:
            self.header = CacheHeader.from_attrs(f.attrs, str(self.path))
            self.content_fingerprint = str(f.attrs.get("content_fingerprint", ""))
            self.poselift_version = str(f.attrs.get("poselift_version", ""))
            self.created = str(f.attrs.get("created", ""))
            self._check(kind, dataset, joint_set, content_fingerprint)
            self.sequences: dict[str, SequenceInfo] = {}
            grp = f.get(SEQ_GROUP)
            if grp is None:
                raise CacheError(f"{self.path}: group '/{SEQ_GROUP}' is missing")
            for gname, g in grp.items():
                attrs = decode_attrs(g.attrs.items())
                sid = str(attrs.pop("seq_id", gname))
                if not attrs.get("complete", False):
                    raise CacheError(f"{self.path}: sequence {sid!r} is not marked complete")
                self.sequences[sid] = SequenceInfo(sid, int(attrs.pop("n_frames")),
                                                   tuple(sorted(g.keys())), attrs)
        self._f: h5py.File | None = None
        self._pid = -1

    def _check(self, kind, dataset, joint_set, fingerprint) -> None:
        want = {"kind": kind, "dataset": dataset, "joint_set": joint_set,
                "content_fingerprint": fingerprint}
        have = {"kind": self.header.kind, "dataset": self.header.dataset,
                "joint_set": self.header.joint_set, "content_fingerprint": self.content_fingerprint}
        diffs = [f"{k}: file has {have[k]!r}, expected {v!r}" for k, v in want.items()
                 if v is not None and have[k] != v]
        if diffs:
            raise CacheMismatchError(f"{self.path}: cache does not match: {'; '.join(diffs)}")

    # -- index ---------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return sorted(self.sequences)

    def __len__(self) -> int:
        return len(self.sequences)

    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self.sequences

    def __iter__(self) -> Iterator[SequenceInfo]:
        return (self.sequences[s] for s in self.ids)

    def info(self, seq_id: str) -> SequenceInfo:
        try:
            return self.sequences[seq_id]
        except KeyError:
            raise CacheError(f"{self.path}: no sequence {seq_id!r}") from None

    @property
    def total_frames(self) -> int:
        return sum(s.n_frames for s in self.sequences.values())

    # -- data ----------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._f is None or self._pid != os.getpid():
            # Never reuse a handle across fork: HDF5 state is not fork-safe.
            self._f = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._f

    def dataset(self, seq_id: str, name: str) -> h5py.Dataset:
        info = self.info(seq_id)
        if name not in info.fields:
            raise CacheError(f"{self.path}: sequence {seq_id!r} has no field {name!r} "
                             f"(it has {list(info.fields)})")
        return self._file()[SEQ_GROUP][group_name(seq_id)][name]

    def read(self, seq_id: str, name: str, start: int | None = None,
             stop: int | None = None) -> np.ndarray:
        """Frames ``[start, stop)`` of one field (all frames by default)."""
        d = self.dataset(seq_id, name)
        try:
            return d[slice(start, stop)]
        except OSError as e:
            raise CacheError(f"{self.path}: sequence {seq_id!r}, field {name!r}: read failed "
                             f"({e}); the file may be truncated") from e

    def read_all(self, name: str, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One field for many sequences (small fields: keypoints, 3D joints)."""
        return {s: self.read(s, name) for s in (ids if ids is not None else self.ids)}

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_f"], state["_pid"] = None, -1
        return state

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Cache({str(self.path)!r}, kind={self.header.kind}, dataset={self.header.dataset}, "
                f"sequences={len(self)}, frames={self.total_frames})")


def open_cache(path: str | os.PathLike, **expect: Any) -> Cache:
    """Open a cache, refusing it if any expectation (kind, dataset, joint_set,
    content_fingerprint) differs."""
    return Cache(path, **expect)


def common_sequences(*caches: Cache, strict_length: bool = True) -> list[str]:
    """Sequence ids present in every cache; with ``strict_length`` their frame counts
    must agree (an error names the sequence and both files)."""
    ids = set(caches[0].sequences)
    for c in caches[1:]:
        ids &= set(c.sequences)
    out = sorted(ids)
    if strict_length:
        for sid in out:
            lens = {str(c.path): c.sequences[sid].n_frames for c in caches}
            if len(set(lens.values())) > 1:
                raise CacheError(f"sequence {sid!r} has different frame counts across caches: {lens}")
    return out
