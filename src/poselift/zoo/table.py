"""The zoo table: published checkpoints by name, read from the packaged ``zoo.json``.

The table is data, not code: ``zoo.json`` beside this module. ``POSELIFT_ZOO_EXTRA`` may name
a second JSON file of the same format whose entries are added (or replace same-named ones),
e.g. a lab's own checkpoints or a test's generated files.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["ZooEntry", "UnknownWeightsError", "load_table", "get_entry", "weights_dir",
           "cached_path", "is_zoo_name"]

UNKNOWN = "unknown"
_REQUIRED = ("name", "file", "urls", "sha256", "licence", "noncommercial", "loader", "contract")


class UnknownWeightsError(KeyError):
    """A name that is not in the zoo table (the message suggests the closest names)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint or data file.

    ``urls`` may hold ``gdrive:<file id>`` for Google Drive; ``archive`` (file, member) means
    the URL serves an archive from which the member with that base name is taken.
    ``sha256_prefix`` is the hash prefix some projects (torchvision) put in the file name.
    """

    name: str
    file: str
    urls: tuple[str, ...]
    sha256: str
    licence: str
    noncommercial: bool
    loader: str
    contract: str
    family: str = ""
    description: str = ""
    sha256_prefix: str | None = None
    size_bytes: int | None = None
    size_note: str | None = None
    archive: dict[str, str] | None = None
    manual: bool = False
    manual_instructions: str | None = None
    checked: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "ZooEntry":
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{where}: entry {d.get('name', '?')!r} lacks field(s) {missing}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"{where}: entry {d['name']!r} has unknown field(s) {extra}")
        sha = str(d["sha256"]).lower()
        if sha != UNKNOWN and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise ValueError(f"{where}: entry {d['name']!r} field 'sha256' is neither 64 hex "
                             f"digits nor 'unknown': {d['sha256']!r}")
        if not d["urls"] and not d.get("manual"):
            raise ValueError(f"{where}: entry {d['name']!r} has no URL and is not marked manual")
        if d.get("archive") and set(d["archive"]) != {"file", "member"}:
            raise ValueError(f"{where}: entry {d['name']!r} field 'archive' needs exactly "
                             "'file' and 'member'")
        return cls(**{**d, "urls": tuple(d["urls"]), "sha256": sha})

    @property
    def url(self) -> str:
        """The first URL (what error messages show), or a note for manual entries."""
        return self.urls[0] if self.urls else "(manual download, see 'poselift weights info')"

    def display_url(self) -> str:
        u = self.url
        if u.startswith("gdrive:"):
            return f"https://drive.google.com/uc?export=download&id={u[len('gdrive:'):]}"
        return u


def _read(path_or_text: str, where: str) -> dict[str, ZooEntry]:
    try:
        doc = json.loads(path_or_text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from None
    out: dict[str, ZooEntry] = {}
    for i, d in enumerate(doc.get("entries", [])):
        e = ZooEntry.from_dict(d, f"{where} entries[{i}]")
        if e.name in out:
            raise ValueError(f"{where}: name {e.name!r} appears twice")
        out[e.name] = e
    return out


@lru_cache(maxsize=8)
def _load(extra: str | None) -> dict[str, ZooEntry]:
    text = resources.files("poselift.zoo").joinpath("zoo.json").read_text(encoding="utf-8")
    table = _read(text, "poselift/zoo/zoo.json")
    if extra:
        p = Path(extra)
        if not p.is_file():
            raise FileNotFoundError(f"POSELIFT_ZOO_EXTRA={extra}: no such file")
        table.update(_read(p.read_text(encoding="utf-8"), str(p)))
    return table


def load_table() -> dict[str, ZooEntry]:
    """Name -> entry: the packaged table plus ``$POSELIFT_ZOO_EXTRA`` when set."""
    return dict(_load(os.environ.get("POSELIFT_ZOO_EXTRA") or None))


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name raises with the closest names suggested."""
    table = load_table()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see 'poselift weights list'"
    raise UnknownWeightsError(f"unknown weights name {name!r}{hint}")


def weights_dir() -> Path:
    """``$POSELIFT_HOME/weights`` (default ``~/.cache/poselift/weights``)."""
    home = os.environ.get("POSELIFT_HOME") or "~/.cache/poselift"
    return Path(home).expanduser() / "weights"


def cached_path(entry: ZooEntry) -> Path:
    """Where the entry's file lives in the cache (whether or not it is there yet)."""
    return weights_dir() / entry.file


_PATH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".npy", ".npz", ".pkl", ".ckpt", ".safetensors")


def is_zoo_name(name_or_path: str | os.PathLike) -> bool:
    """True for a table name; False for anything that exists on disk or looks like a path."""
    s = os.fspath(name_or_path)
    if os.path.exists(s) or os.sep in s or "/" in s or s.lower().endswith(_PATH_SUFFIXES):
        return False
    return s in load_table()
