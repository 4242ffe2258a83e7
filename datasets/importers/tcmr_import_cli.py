"""``tcmr`` import subcommands: TCMR/VIBE DB files, InstaVariety HDF5, 3DPW sequence files.

Usable standalone (``main(argv)``) or registered in ``poselift-import`` via
``add_arguments`` / ``run``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from poselift.core.cli import run_guarded

from .tcmr_db import DB_SPECS

__all__ = ["add_arguments", "run", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for the caches")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--db", help="a TCMR/VIBE *_db.pt file (joblib dump)")
    g.add_argument("--insta", help="insta_train_db.h5")
    g.add_argument("--3dpw-root", dest="pw3d_root", help="3DPW folder holding sequenceFiles/")
    p.add_argument("--dataset", choices=sorted(DB_SPECS), help="dataset of --db (3dpw, h36m, ...)")
    p.add_argument("--split", choices=("train", "validation", "test"), help="3DPW split (with --3dpw-root)")
    p.add_argument("--name", help="cache name prefix (default: DB file stem without _db)")
    p.add_argument("--features-dtype", choices=("float16", "float32"), default="float16",
                   help="stored feature dtype (default float16: half the disk, measured fastest to read)")
    p.add_argument("--noncontiguous", choices=("error", "split"), default="error",
                   help="videos whose rows are not contiguous: stop, or import each run separately")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unrestricted unpickling (only for files you trust)")
    p.add_argument("--overwrite", action="store_true", help="replace existing caches")


def run(a: argparse.Namespace) -> int:
    from pathlib import Path

    if a.db:
        from .tcmr_db import import_tcmr_db

        if not a.dataset:
            raise ValueError(f"--db {a.db} needs --dataset (one of {', '.join(sorted(DB_SPECS))}): "
                             "the DB file does not say which dataset it holds")
        s = import_tcmr_db(a.db, a.dataset, a.out, name=a.name, features_dtype=a.features_dtype,
                           noncontiguous=a.noncontiguous, trust=a.trust_pickle, overwrite=a.overwrite)
    elif a.insta:
        from .insta import import_insta_h5

        s = import_insta_h5(a.insta, a.out, name=a.name or "insta_train",
                            features_dtype=a.features_dtype, noncontiguous=a.noncontiguous,
                            overwrite=a.overwrite)
    else:
        from .threedpw import SPLIT_DIRS, import_3dpw_sequences

        if not a.split:
            raise ValueError("--3dpw-root needs --split")
        name = a.name or f"3dpw_{SPLIT_DIRS[a.split]}_seqfiles"
        s = import_3dpw_sequences(a.pw3d_root, a.split, Path(a.out) / f"{name}_gt.h5",
                                  trust=a.trust_pickle, overwrite=a.overwrite)
    print(s.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="poselift-import tcmr", description=__doc__.splitlines()[0])
    add_arguments(p)
    a = p.parse_args(argv)
    return run_guarded("poselift-import tcmr", lambda: run(a))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
