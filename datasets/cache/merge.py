"""Merge finalised caches (for example the shards of a multi-rank extraction) into one cache.

Why a physical copy and not an HDF5 virtual-dataset / ExternalLink index: the merged file is
self-contained (it can be moved, archived and read on a machine that lacks the shard files),
readers need no change and no link-resolution rules, and the copy re-checks every shard. The
cost is one sequential read + write of the data by one process (see docs/scaling.md for when
that matters and how an ExternalLink index would avoid it).

Rules: every input must be a finalised cache with the same header identity (kind, dataset,
joint set, source incl. weights hash and preprocessing contract, inputs fingerprint); sequences
are unioned; a sequence present in several inputs must have the same digest there (it is then
copied once); a different digest is an error naming both files. When the inputs record
per-input fingerprints, the overall inputs fingerprint may differ: a sequence whose input has
a different fingerprint in a later input (a fixed video re-extracted into a new shard) is
taken from that later input. The result carries ONE provenance record (the shared header,
with the union of the per-input fingerprints) and the content fingerprint of the union. The output is
written to ``<out>.tmp`` and renamed, so a crash leaves the old output (if any) untouched.
"""
from __future__ import annotations

import argparse
import errno
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py

from .schema import (SEQ_GROUP, CacheError, CacheHeader, CacheMismatchError, belongs_to,
                     compare_headers, content_fingerprint)
from .lock import WriterLock
from .storage import DEFAULT_POLICY, StoragePolicy
from .writer import _copy_group, _fsync_path, partial_dir

__all__ = ["merge_caches", "MergeResult", "add_merge_arguments", "run_merge"]


@dataclass
class MergeResult:
    """What a merge did: output path, sequences per input, duplicates skipped, fingerprint."""

    path: Path
    sequences: int = 0
    frames: int = 0
    per_input: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    content_fingerprint: str = ""


def _header_of(path: Path) -> CacheHeader:
    if not path.exists():
        if partial_dir(path).exists():
            raise CacheError(f"{path}: not finalised (its writer was interrupted; parts are in "
                             f"{partial_dir(path)}); re-run the extraction that writes it first")
        raise CacheError(f"{path}: no such cache file")
    try:
        with h5py.File(path, "r") as f:
            return CacheHeader.from_attrs(f.attrs, str(path))
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 file ({e}); truncated or corrupt") from e


def _superseded(headers: list[CacheHeader], i: int) -> set[str]:
    """Inputs of ``headers[i]`` whose fingerprint differs in a later header (newer extraction)."""
    mine = headers[i].input_fingerprints
    return {k for h in headers[i + 1:] for k, v in h.input_fingerprints.items()
            if k in mine and mine[k] != v}


def merge_caches(out: str | os.PathLike, inputs: Sequence[str | os.PathLike], *,
                 remove_inputs: bool = False, policy: StoragePolicy = DEFAULT_POLICY) -> MergeResult:
    """Union the sequences of ``inputs`` into the cache ``out`` (atomically replaced).

    ``out`` may itself be one of the inputs (re-merging new shards into an existing cache).
    With ``remove_inputs`` the inputs other than ``out`` are deleted after the rename.

    The output's writer lock is held throughout, so a merge and a writer (or a second merge)
    never write the same cache at once.
    """
    lock = WriterLock(Path(out))
    lock.acquire()
    try:
        return _merge_locked(Path(out), inputs, remove_inputs=remove_inputs, policy=policy)
    finally:
        lock.release()


def _merge_locked(out: Path, inputs: Sequence[str | os.PathLike], *, remove_inputs: bool,
                  policy: StoragePolicy) -> MergeResult:
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise CacheError(f"{out}: nothing to merge (no input caches given)")
    headers = [_header_of(p) for p in paths]
    ref, ref_path = headers[0], paths[0]
    for p, h in zip(paths[1:], headers[1:]):
        diffs, _ = compare_headers(h, ref)
        if diffs:
            raise CacheMismatchError(f"{p}: cannot be merged with {ref_path}: {'; '.join(diffs)}")
    stale = [_superseded(headers, i) for i in range(len(paths))]
    res = MergeResult(out)
    tmp = out.with_name(out.name + ".tmp")
    digests: dict[str, str] = {}
    origin: dict[str, Path] = {}
    try:
        with h5py.File(tmp, "w") as dst:
            seqs = dst.create_group(SEQ_GROUP)
            for p, h, old in zip(paths, headers, stale):
                n = 0
                with h5py.File(p, "r") as f:
                    for gname, g in f[SEQ_GROUP].items():
                        sid, dig = str(g.attrs["seq_id"]), str(g.attrs["sha256"])
                        if old and (sid in old or (sid not in h.input_fingerprints
                                                   and belongs_to(sid, old))):
                            continue  # its input changed; a later input holds the new version
                        if sid in digests:
                            if digests[sid] != dig:
                                raise CacheError(
                                    f"{p}: sequence {sid!r} differs from the copy in {origin[sid]} "
                                    f"(digest {dig[:12]}... vs {digests[sid][:12]}...); the inputs "
                                    f"were not made from the same data/settings")
                            res.duplicates += 1
                            continue
                        _copy_group(g, seqs, gname, policy)
                        digests[sid], origin[sid] = dig, p
                        res.frames += int(g.attrs["n_frames"])
                        n += 1
                res.per_input[str(p)] = n
            prints: dict[str, str] = {}
            for h in headers:  # each shard records the inputs it extracted
                prints.update(h.input_fingerprints)
            dst.attrs.update(dataclasses.replace(headers[-1], input_fingerprints=prints).to_attrs())
            res.content_fingerprint = content_fingerprint(digests)
            dst.attrs["content_fingerprint"] = res.content_fingerprint
            dst.attrs["num_sequences"] = len(digests)
        _fsync_path(tmp)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC or "No space" in str(e):
            raise CacheError(f"{out}: no space left on the device while merging ({e}); the inputs "
                             f"are untouched - free space and merge again") from e
        raise CacheError(f"{out}: merge failed: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    res.sequences = len(digests)
    if remove_inputs:
        for p in paths:
            if p.resolve() != out.resolve():
                p.unlink(missing_ok=True)
    return res


def add_merge_arguments(m: argparse.ArgumentParser) -> None:
    """The options of ``poselift-cache merge OUT INPUT...``."""
    m.add_argument("path", type=Path, help="output cache (may exist: its sequences are kept)")
    m.add_argument("inputs", type=Path, nargs="+", help="input caches (shards)")
    m.add_argument("--remove-inputs", action="store_true", help="delete the inputs after merging")


def run_merge(args: argparse.Namespace) -> int:
    """The ``merge`` subcommand: existing output (if any) + inputs -> output."""
    inputs = ([args.path] if args.path.exists() and args.path not in args.inputs else []) + list(args.inputs)
    r = merge_caches(args.path, inputs, remove_inputs=args.remove_inputs)
    print(f"merged {len(inputs)} cache(s) into {r.path}: {r.sequences} sequences, {r.frames} frames "
          f"({r.duplicates} duplicates skipped), content fingerprint {r.content_fingerprint[:16]}...")
    return 0
