"""The one runner and the one error handler behind every ``poselift-*`` console script.

A command is ``(add_arguments(parser), run(args) -> exit code, one-line help)``. Errors in
:data:`poselift.core.errors.USER_ERRORS` end as ``<prog> <command>: error: <message>`` on stderr
with exit status 2, the same for every tool.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from .errors import USER_ERRORS, user_message

__all__ = ["Command", "build_parser", "run_parsed", "run_subcommands", "run_guarded"]

# (add_arguments, run, one-line help) or, for a subcommand whose --help needs more than the
# one line, (add_arguments, run, help, keywords for ``add_parser``: description, epilog,
# formatter_class).
Command = (tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
           | tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str,
                   dict[str, Any]])


def run_guarded(prog: str, run: Callable[[], int | None]) -> int:
    """Call ``run``; a user error becomes one ``error:`` line naming ``prog`` and exit 2."""
    try:
        return int(run() or 0)
    except USER_ERRORS as e:
        print(f"{prog}: error: {user_message(e)}", file=sys.stderr)
        return 2


def build_parser(prog: str, description: str, commands: dict[str, Command], *,
                 formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter,
                 full_description: bool = False, metavar: str | None = None
                 ) -> argparse.ArgumentParser:
    """The parser of a tool made of ``commands``. ``description``: the tool's text, of which
    the first paragraph is shown (a module docstring can be passed as it is) unless
    ``full_description``."""
    if not full_description:
        description = " ".join(description.split("\n\n")[0].split())
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=formatter_class)
    sub = p.add_subparsers(dest="command", required=True, metavar=metavar)
    for name, (add, run, help_, *more) in commands.items():
        kw: dict[str, Any] = {"description": help_, "formatter_class": formatter_class,
                              **(more[0] if more else {})}
        sp = sub.add_parser(name, help=help_, **kw)
        add(sp)
        sp.set_defaults(_run=run)
    return p


def run_parsed(prog: str, args: argparse.Namespace) -> int:
    """Run the subcommand :func:`build_parser` parsed into ``args`` under :func:`run_guarded`."""
    return run_guarded(f"{prog} {args.command}", lambda: args._run(args))


def run_subcommands(prog: str, description: str, commands: dict[str, Command],
                    argv: Sequence[str] | None, *,
                    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter,
                    full_description: bool = False, metavar: str | None = None) -> int:
    """Parse ``argv`` into one of ``commands`` (see :func:`build_parser`) and run it under
    :func:`run_guarded`."""
    p = build_parser(prog, description, commands, formatter_class=formatter_class,
                     full_description=full_description, metavar=metavar)
    return run_parsed(prog, p.parse_args(argv))
