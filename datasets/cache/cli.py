"""``poselift-cache``: inspect, check and repair poselift HDF5 caches."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from poselift.core.cli import Command, run_subcommands

from .schema import CacheError, CacheHeader
from .verify import cache_info, format_info, verify_cache
from .merge import add_merge_arguments, run_merge
from .writer import CacheWriter, partial_dir


def _add_info(a: argparse.ArgumentParser) -> None:
    a.add_argument("path", type=Path, help="the cache file (.h5)")
    a.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def _add_verify(v: argparse.ArgumentParser) -> None:
    v.add_argument("paths", type=Path, nargs="+", help="one or more cache files")
    v.add_argument("--no-digests", action="store_true",
                   help="skip re-hashing the data (faster; structure and values are still checked)")
    v.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN/inf values (caches written with allow_nonfinite)")
    v.add_argument("--deep", action="store_true",
                   help="also re-read the committed parts of an interrupted writer and check that "
                        "frame_index rises within every sequence")
    v.add_argument("--fingerprint", help="also require this content fingerprint (single path only)")
    v.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _add_finalize(f: argparse.ArgumentParser) -> None:
    f.add_argument("path", type=Path, help="the cache file whose <path>.partial folder should be merged")


def _info(args: argparse.Namespace) -> int:
    info = cache_info(args.path)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _verify(args: argparse.Namespace) -> int:
    results = [verify_cache(pth, check_digests=not args.no_digests,
                            allow_nonfinite=args.allow_nonfinite,
                            expect_fingerprint=args.fingerprint, deep=args.deep)
               for pth in args.paths]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            status = "OK" if r.ok else f"{len(r.problems)} PROBLEM(S)"
            print(f"{r.path}: {status} ({r.sequences} sequences, {r.frames} frames)")
            for msg in r.problems:
                print(f"  problem: {msg}")
            for msg in r.warnings:
                print(f"  warning: {msg}")
    return 0 if all(r.ok for r in results) else 1


def _finalize(args: argparse.Namespace) -> int:
    parts = partial_dir(args.path)
    hdr = parts / "header.json"
    if not hdr.exists():
        raise CacheError(f"{args.path}: nothing to finalize ({hdr} does not exist)")
    w = CacheWriter(args.path, CacheHeader.from_json(hdr.read_text()))
    try:
        out = w.finalize()
    finally:
        w.close()
    print(f"finalized {out}")
    return 0


COMMANDS: dict[str, Command] = {
    "info": (_add_info, _info, "sequences, frames, fields and provenance of a cache"),
    "verify": (_add_verify, _verify, "check structure, shapes, NaN/inf, completeness and fingerprints"),
    "finalize": (_add_finalize, _finalize, "merge the committed sequences of an interrupted writer into "
                                           "the cache (what the writer does when it finishes)"),
    "merge": (add_merge_arguments, run_merge, "union finalised caches with the same provenance (e.g. "
                                              "the shards of a sharded extraction) into one cache"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommands("poselift-cache", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
