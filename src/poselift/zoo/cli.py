"""``poselift weights list | info NAME | fetch NAME... | verify | path NAME | docs``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .download import WeightsError, fetch, file_sha256, recorded_sha256
from .table import UNKNOWN, UnknownWeightsError, cached_path, get_entry, load_table, weights_dir


def _size(n: int | None) -> str:
    return f"{n / 1e6:.1f} MB" if n else "?"


def _list(a: argparse.Namespace) -> int:
    rows = [(e.name, _size(cached_path(e).stat().st_size if cached_path(e).is_file() else e.size_bytes),
             "manual" if e.manual else "",
             "cached" if cached_path(e).is_file() else "-", e.licence.split(";")[0][:48])
            for e in load_table().values()]
    print(f"{'name':<36} {'size':>9} {'':<6} {'cache':<6} licence   (cache: {weights_dir()})")
    for name, size, manual, cached, lic in rows:
        print(f"{name:<36} {size:>9} {manual:<6} {cached:<6} {lic}")
    return 0


def _info(a: argparse.Namespace) -> int:
    e = get_entry(a.name)
    dest = cached_path(e)
    print(f"name:        {e.name}\ndescription: {e.description}\nfile:        {e.file}")
    for u in e.urls:
        print(f"url:         {u}")
    if e.archive:
        print(f"archive:     {e.archive['file']} (member {e.archive['member']})")
    if e.manual:
        print(f"manual:      {e.manual_instructions}")
    print(f"size:        {e.size_bytes or e.size_note or 'not published'}")
    print(f"sha256:      {e.sha256}" + (f" (file-name prefix {e.sha256_prefix})" if e.sha256_prefix else ""))
    print(f"licence:     {e.licence}\nloader:      {e.loader}\ncontract:    {e.contract}")
    print(f"checked:     {e.checked}\npath:        {dest} ({'cached' if dest.is_file() else 'not cached'})")
    return 0


def _fetch(a: argparse.Namespace) -> int:
    for name in a.names:
        print(fetch(name, progress=not a.no_progress))
    return 0


def _path(a: argparse.Namespace) -> int:
    print(cached_path(get_entry(a.name)))
    return 0


def _verify(a: argparse.Namespace) -> int:
    bad = 0
    for e in load_table().values():
        dest = cached_path(e)
        if not dest.is_file():
            continue
        got = file_sha256(dest)
        want = e.sha256 if e.sha256 != UNKNOWN else recorded_sha256(dest)
        if want:
            ok, how = got == want, "sha256"
        elif e.sha256_prefix:
            ok, how = got.startswith(e.sha256_prefix), f"prefix {e.sha256_prefix}"
        else:
            ok, how = True, "no hash known or recorded"
        bad += not ok
        print(f"{'ok' if ok else 'CORRUPT':<8} {e.name:<36} {dest} ({how})")
    if bad:
        print(f"{bad} corrupt file(s): delete them and fetch again", file=sys.stderr)
    return 1 if bad else 0


def _docs(a: argparse.Namespace) -> int:
    from .docs import render_markdown

    text = render_markdown()
    if a.write:
        Path(a.write).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="poselift weights", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="names, sizes, licences, cached or not").set_defaults(fn=_list)
    s = sub.add_parser("info", help="everything the table says about one entry")
    s.add_argument("name")
    s.set_defaults(fn=_info)
    s = sub.add_parser("fetch", help="download (once) and verify; prints the cached paths")
    s.add_argument("names", nargs="+")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=_fetch)
    sub.add_parser("verify", help="re-hash every cached file; exit 1 if any is corrupt").set_defaults(fn=_verify)
    s = sub.add_parser("path", help="where the file of NAME lives (cached or not)")
    s.add_argument("name")
    s.set_defaults(fn=_path)
    s = sub.add_parser("docs", help="render docs/weights.md from the table")
    s.add_argument("--write", metavar="FILE", help="write to FILE instead of stdout")
    s.set_defaults(fn=_docs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (WeightsError, UnknownWeightsError) as e:
        print(f"poselift weights: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
