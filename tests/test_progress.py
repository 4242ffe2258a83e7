"""Progress output: a bar only on a terminal (or when forced), plain lines elsewhere."""
from __future__ import annotations

import argparse
import io

import pytest

from poselift.core.progress import LineProgress, add_progress_flags, progress_bar, progress_mode


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pipe_gets_plain_lines_without_carriage_returns():
    out = io.StringIO()
    bar = progress_bar(range(500), desc="epoch 1/1", unit="batch", stream=out, every_s=0.0)
    assert isinstance(bar, LineProgress)
    for i, _ in enumerate(bar):
        if i % 100 == 0:
            bar.set_postfix(loss="0.5")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 501  # every_s=0: one line per update plus the closing line
    assert lines[-1].startswith("epoch 1/1 | 500/500 batch") and "loss=0.5" in lines[-1]


def test_periodic_lines_are_rate_limited_and_off_is_silent():
    out = io.StringIO()
    bar = progress_bar(total=10_000, stream=out, every_s=3600.0)
    for _ in range(10_000):
        bar.update(1)
    bar.close()
    assert out.getvalue().count("\n") == 1  # only the final line within the hour
    quiet = io.StringIO()
    for _ in progress_bar(range(50), progress=False, stream=quiet, every_s=0.0):
        pass
    assert quiet.getvalue() == ""
    transient = io.StringIO()
    list(progress_bar(range(3), stream=transient, every_s=3600.0, leave=False))
    assert transient.getvalue() == ""


def test_terminal_or_forced_gets_a_bar():
    assert not isinstance(progress_bar(range(3), stream=_Tty()), LineProgress)
    assert not isinstance(progress_bar(range(3), progress="bar", stream=io.StringIO()), LineProgress)
    assert isinstance(progress_bar(range(3), progress="lines", stream=_Tty()), LineProgress)
    with pytest.raises(ValueError, match="progress must be"):
        progress_bar(range(3), progress="fancy")


def test_flags():
    p = argparse.ArgumentParser()
    add_progress_flags(p)
    assert progress_mode(p.parse_args([])) == "auto"
    assert progress_mode(p.parse_args(["--progress"])) == "bar"
    assert progress_mode(p.parse_args(["--no-progress"])) == "off"
    with pytest.raises(SystemExit):
        p.parse_args(["--progress", "--no-progress"])
