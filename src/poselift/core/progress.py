"""Progress reporting that suits where the output goes.

A tqdm bar redraws itself with carriage returns; written to a file or a pipe (a CI log,
``> train.log``) that leaves thousands of partial updates behind. So a bar is drawn only when the
stream is a terminal, or when the user asks for it (``--progress``); otherwise a plain line is
written every ``every_s`` seconds and once at the end.

``progress`` values accepted everywhere a function takes one:
``True``/``"auto"`` (bar on a terminal, plain lines elsewhere), ``"bar"`` (always a bar),
``"lines"`` (always plain lines), ``False``/``"off"`` (nothing).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any, Iterable, Iterator

from tqdm import tqdm

Progress = bool | str
_MODES = ("auto", "bar", "lines", "off")


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """``--progress`` (force a bar) and ``--no-progress`` (silence) on one CLI parser."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--progress", action="store_true",
                   help="draw a progress bar even when the output is not a terminal")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress output (default: a bar on a terminal, plain periodic lines otherwise)")


def progress_mode(args: argparse.Namespace) -> str:
    """The mode chosen by the flags of :func:`add_progress_flags`."""
    if getattr(args, "no_progress", False):
        return "off"
    return "bar" if getattr(args, "progress", False) else "auto"


def _mode(progress: Progress, stream: IO[str]) -> str:
    if progress is True:
        progress = "auto"
    elif progress is False:
        progress = "off"
    if progress not in _MODES:
        raise ValueError(f"progress must be a bool or one of {_MODES}, got {progress!r}")
    if progress == "auto":
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "lines"
    return progress


class LineProgress:
    """The part of tqdm's interface this project uses, reporting with plain lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str | None = None,
                 unit: str = "it", stream: IO[str] | None = None, every_s: float = 30.0,
                 silent: bool = False, leave: bool = True) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.silent, self.leave = every_s, silent, leave
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._closed = False

    def _line(self) -> str:
        el = time.monotonic() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = f"{self.n / el:.1f} {self.unit}/s" if el > 0 else ""
        post = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        parts = [p for p in (self.desc, f"{done} {self.unit}", f"{el:.0f}s", rate, post) if p]
        return " | ".join(parts)

    def _maybe_print(self, force: bool = False) -> None:
        if self.silent:
            return
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            print(self._line(), file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = {k: v for k, v in kw.items() if k != "refresh"}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.leave:  # a transient bar (leave=False) leaves no final line either
                self._maybe_print(force=True)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress built without an iterable")
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", progress: Progress = True, leave: bool = True,
                 stream: IO[str] | None = None, every_s: float = 30.0, **tqdm_kw: Any) -> Any:
    """A tqdm bar on a terminal (or when ``progress="bar"``), a :class:`LineProgress` otherwise.

    ``tqdm_kw`` (e.g. ``smoothing``) only shapes the bar; plain lines ignore it.
    """
    stream = stream if stream is not None else sys.stderr
    mode = _mode(progress, stream)
    if mode == "bar":
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, **tqdm_kw)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=stream, every_s=every_s,
                        silent=mode == "off", leave=leave)
