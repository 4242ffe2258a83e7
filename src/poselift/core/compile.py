"""``torch.compile`` behind a switch, with a clean fallback to eager execution.

Compilation happens lazily, at the first call, and can fail there (no C++ compiler for the
CPU backend, an unsupported op, an old torch): :class:`MaybeCompiled` then prints one line
saying why and runs the eager module from then on. The compiled and eager callables share
the same parameters, so the optimizer and ``state_dict`` are unaffected by the switch.
"""
from __future__ import annotations

import sys
from typing import Any

import torch

__all__ = ["MaybeCompiled", "maybe_compile"]


class MaybeCompiled:
    """Callable running ``torch.compile(module)``, or ``module`` after a compile failure."""

    def __init__(self, module: torch.nn.Module, **compile_kw: Any) -> None:
        self.module = module
        self.fallback_reason: str | None = None
        try:
            self._fn: Any = torch.compile(module, **compile_kw)
        except Exception as e:  # noqa: BLE001 - any failure means: run eager
            self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"torch.compile unavailable, running eager ({self.fallback_reason})", file=sys.stderr)
        self._fn = self.module

    @property
    def compiled(self) -> bool:
        return self._fn is not self.module

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if not self.compiled:
            return self._fn(*args, **kw)
        try:
            return self._fn(*args, **kw)
        except Exception as e:  # noqa: BLE001
            self._fall_back(e)
            return self.module(*args, **kw)

    def __getattr__(self, name: str) -> Any:  # train(), eval(), parameters() ... of the module
        return getattr(self.__dict__["module"], name)


def maybe_compile(module: torch.nn.Module, enabled: bool, **compile_kw: Any) -> Any:
    """``module`` itself when not ``enabled``, else a :class:`MaybeCompiled` around it."""
    return MaybeCompiled(module, **compile_kw) if enabled else module
