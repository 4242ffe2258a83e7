"""The one runner and the one error handler behind every ``poselift-*`` console script.

A command is ``(add_arguments(parser), run(args) -> exit code, one-line help)``. Errors in
:data:`poselift.core.errors.USER_ERRORS` end as ``<prog> <command>: error: <message>`` on stderr
with exit status 2, the same for every tool.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import USER_ERRORS, user_message

__all__ = ["Command", "run_subcommands", "run_guarded"]

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]


def run_guarded(prog: str, run: Callable[[], int | None]) -> int:
    """Call ``run``; a user error becomes one ``error:`` line naming ``prog`` and exit 2."""
    try:
        return int(run() or 0)
    except USER_ERRORS as e:
        print(f"{prog}: error: {user_message(e)}", file=sys.stderr)
        return 2


def run_subcommands(prog: str, description: str, commands: dict[str, Command],
                    argv: Sequence[str] | None, *,
                    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> int:
    """Parse ``argv`` into one of ``commands`` and run it under :func:`run_guarded`.
    ``description``: the tool's text, of which the first paragraph is shown (a module
    docstring can be passed as it is)."""
    description = " ".join(description.split("\n\n")[0].split())
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=formatter_class)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (add, run, help_) in commands.items():
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=formatter_class)
        add(sp)
        sp.set_defaults(_run=run)
    args = p.parse_args(argv)
    return run_guarded(f"{prog} {args.command}", lambda: args._run(args))
