"""Restricted loading of foreign pickles (research checkpoints, pickled dicts).

Reference checkpoints (VideoPose3D ``.bin``, TCMR/VIBE ``.pth.tar``, ...) are
pickles and may hold numpy objects (arrays, scalars, ``RandomState``) next to
tensors. Unpickling an untrusted file can run arbitrary code, so by default we
only allow torch's tensor rebuilders plus an explicit list of numpy globals,
under both the numpy-2 (``numpy._core``) and the numpy-1.x (``numpy.core``)
spellings, because the reference files were written with numpy 1.x.

Public API:

- :data:`NUMPY_SAFE_GLOBALS`: ``(object, "module.name")`` pairs for torch's
  ``safe_globals`` (arrays, scalars, dtypes of plain numeric and fixed-width
  string types, RandomState and its MT19937 bit generator). Object arrays are
  not allowed under torch.load (torch refuses BUILD on their dtype).
- :func:`safe_torch_load`: ``torch.load(weights_only=True)`` with those globals
  (plus caller-given extras); ``trust=True`` opts into full unpickling.
- :func:`safe_pickle_load`: the same policy for plain ``pickle`` files.
- :class:`UnsafePickleError`: raised for a refused global; names file and global.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from poselift.core.errors import UserError

__all__ = [
    "NUMPY_SAFE_GLOBALS", "UnsafePickleError", "allowed_global_names", "plain_safe_globals",
    "safe_pickle_load",
    "safe_torch_load", "torch_refusal",
]

SafeGlobal = tuple[Any, str]


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (nothing was executed)."""

    def __init__(self, source: str, global_name: str | None, detail: str = "") -> None:
        self.source = source
        self.global_name = global_name
        if global_name is None:  # a refused opcode, or not a pickle at all
            msg = (f"{source}: refused by the restricted unpickler ({detail}); the file is "
                   "corrupt, or (only if you trust it) load it with trust=True / trust_pickle=True")
        else:
            msg = (f"{source}: refused to unpickle global {global_name!r} (not on the "
                   "allow-list); if you trust this file, load it with trust=True / trust_pickle=True")
            if detail:
                msg += f" [{detail}]"
        super().__init__(msg)


def _numpy_safe_globals() -> list[SafeGlobal]:
    core = np._core.multiarray  # numpy >= 2; numpy 1.x files name it numpy.core.multiarray
    from numpy.random import _mt19937, _pickle, mtrand

    out: list[SafeGlobal] = []
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core, name)
        out += [(fn, f"numpy._core.multiarray.{name}"), (fn, f"numpy.core.multiarray.{name}")]
    frombuffer = np._core.numeric._frombuffer  # arrays pickled with protocol 5 buffers
    out += [(frombuffer, "numpy._core.numeric._frombuffer"), (frombuffer, "numpy.core.numeric._frombuffer")]
    out += [
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        # Pickles of RandomState: numpy >= 1.17 via the _pickle helpers, numpy 1.16
        # and older via numpy.random.__RandomState_ctor (no arguments + state tuple).
        (_pickle.__randomstate_ctor, "numpy.random._pickle.__randomstate_ctor"),
        (_pickle.__bit_generator_ctor, "numpy.random._pickle.__bit_generator_ctor"),
        (getattr(np.random, "__RandomState_ctor"), "numpy.random.__RandomState_ctor"),
        (mtrand.RandomState, "numpy.random.mtrand.RandomState"),
        (_mt19937.MT19937, "numpy.random._mt19937.MT19937"),
    ]
    # BUILD on a dtype checks type(dtype) (e.g. numpy.dtypes.Float32DType), so the
    # concrete classes of the plain numeric dtypes must be allowed too.
    # Fixed-width strings/bytes are plain data too (name arrays); object dtype is not allowed.
    for code in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                 "c8", "c16", "U", "S"):
        cls = type(np.dtype(code))
        out.append((cls, f"{cls.__module__}.{cls.__qualname__}"))
    return out


NUMPY_SAFE_GLOBALS: list[SafeGlobal] = _numpy_safe_globals()

# Audit of the allow-list (each entry is a constructor without side effects):
# - numpy _reconstruct/scalar/_frombuffer/ndarray/dtype and the dtype classes build arrays,
#   scalars and dtypes from bytes already in the stream; none opens a file or imports (a
#   dtype given as a string is parsed, never resolved as a module path). numpy.memmap is
#   NOT here: called by REDUCE it creates or truncates any file (mode 'w+').
# - the RandomState helpers look the bit generator up in numpy's fixed table; the optional
#   ctor argument of __randomstate_ctor can only be another object from this same list.
# - set/frozenset/complex/slice/bytearray/range/OrderedDict are plain containers.
# - _codecs.encode (how protocol 2 stores bytes) runs a codec lookup, which imports
#   ``encodings.<name>``; only the latin-1 spellings that pickle itself writes are accepted.
# Refused by construction: anything that opens files (builtins.open, numpy.load,
# numpy.memmap, io.*), imports (builtins.__import__, importlib.*), executes (eval, exec,
# compile, os.*, subprocess.*) or reaches attributes (builtins.getattr).
_PICKLE_BYTES_ENCODINGS = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1"})

_PLAIN_SAFE: dict[str, Any] = {name: obj for obj, name in NUMPY_SAFE_GLOBALS}
_PLAIN_SAFE.update({
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.complex": complex,
    "builtins.slice": slice, "builtins.bytearray": bytearray, "builtins.range": range,
})


def _latin1_encoder(source: str) -> Any:
    """``_codecs.encode`` restricted to latin-1 (protocol-2 bytes); other codecs import."""
    import _codecs

    def encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if not isinstance(encoding, str) or encoding.lower() not in _PICKLE_BYTES_ENCODINGS:
            raise UnsafePickleError(source, "_codecs.encode", f"codec {encoding!r}; only latin-1 "
                                    "is plain data")
        return _codecs.encode(obj, encoding, errors)

    return encode


def _as_pair(g: Any) -> SafeGlobal:
    if isinstance(g, tuple):
        return g
    return (g, f"{g.__module__}.{g.__qualname__}")


def _unpickler_detail(msg: str) -> str:
    """The line of torch's (long) message that says what the unpickler refused."""
    boilerplate = ("Weights only load failed", "Please file an issue", "(1)", "(2)",
                   "Check the documentation")
    for line in msg.splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not line.startswith(boilerplate):
            return line
    return msg.strip().splitlines()[0] if msg.strip() else ""


def _refused_global(detail: str) -> str | None:
    """Best-effort dotted name of the refused global from torch's error line."""
    for pattern in (r"GLOBAL (\S+)", r"unrecognized function (.+?)(?: which|$)",
                    r"but got <class '([^']+)'>", r"but got (\S+)"):
        m = re.search(pattern, detail)
        if m:
            return m.group(1)
    return None


def torch_refusal(source: str, exc: BaseException) -> UnsafePickleError:
    """One-line :class:`UnsafePickleError` (file + refused global) from torch's multi-paragraph
    ``weights_only`` error, for callers that use ``torch.load(weights_only=True)`` directly."""
    detail = _unpickler_detail(str(exc))
    name = _refused_global(detail)
    # once the global is named, torch's advice (add_safe_globals / weights_only=False) is noise
    return UnsafePickleError(str(source), name, "" if name else detail[:300])


def safe_torch_load(path: str | os.PathLike[str] | BinaryIO, map_location: Any = "cpu", *,
                    extra_globals: Sequence[Any] = (), trust: bool = False) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) without running pickled code.

    ``extra_globals``: more objects (or ``(object, "dotted.name")`` pairs) to
    allow, e.g. a dataclass a specific checkpoint contains. ``trust=True`` uses
    full unpickling (``weights_only=False``): only for files you trust.
    Raises :class:`UnsafePickleError` (naming the file and the global) on refusal.
    """
    source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    allowed = NUMPY_SAFE_GLOBALS + [_as_pair(g) for g in extra_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise torch_refusal(str(source), exc) from None
    except (RuntimeError, EOFError) as exc:  # truncated / not a torch file: say which
        raise RuntimeError(f"{source}: not a readable torch.save file ({exc})") from exc


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str, allowed: dict[str, Any],
                 encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full == "_codecs.encode":
            return _latin1_encoder(self._source)
        if full in self._allowed:
            return self._allowed[full]
        raise UnsafePickleError(self._source, full)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self._source, f"persistent id {pid!r}")


def safe_pickle_load(path: str | os.PathLike[str] | BinaryIO, *, extra_globals: Sequence[Any] = (),
                     trust: bool = False, encoding: str = "ASCII", source: str | None = None) -> Any:
    """Load a plain pickle (a file path, or an open binary file with ``source`` naming it in
    errors) allowing only builtins, numpy arrays/scalars/RandomState.

    Every global (including those inside object arrays) passes ``find_class``,
    so object arrays are accepted: their items obey the same allow-list.

    ``encoding="latin1"`` reads Python-2 numpy pickles. ``trust=True`` uses
    full unpickling. Raises :class:`UnsafePickleError` naming file and global.
    """
    if not isinstance(path, (str, os.PathLike)):
        return _load_fileobj(path, source or getattr(path, "name", "<stream>"), extra_globals,
                             trust, encoding)
    with Path(os.fspath(path)).open("rb") as fh:
        return _load_fileobj(fh, source or os.fspath(path), extra_globals, trust, encoding)


def _load_fileobj(fh: BinaryIO, source: str, extra_globals: Sequence[Any], trust: bool,
                  encoding: str) -> Any:
    if trust:
        return pickle.load(fh, encoding=encoding)  # noqa: S301 - explicit opt-in
    allowed = dict(_PLAIN_SAFE)
    allowed.update({name: obj for obj, name in (_as_pair(g) for g in extra_globals)})
    return _RestrictedUnpickler(fh, source, allowed, encoding).load()


def plain_safe_globals() -> dict[str, Any]:
    """Dotted name -> object map the restricted plain unpickler accepts (a copy: extend it
    for format-specific needs, e.g. joblib's array wrapper)."""
    return dict(_PLAIN_SAFE)


def allowed_global_names() -> list[str]:
    """Dotted names :func:`safe_torch_load` accepts beyond torch's defaults (for docs/tests)."""
    return sorted(name for _, name in NUMPY_SAFE_GLOBALS)

