"""Standard splits of Human3.6M / HumanEva-I and the reference's sequence selection.

Selection follows VideoPose3D's ``run.py`` ``fetch()``:

- subjects: exact names; actions: a sequence is kept when its action name *starts with*
  one of the filters (so ``Walk`` selects ``Walking 1 chunk0`` and, on Human3.6M, also
  ``WalkDog`` and ``WalkTogether`` - the reference behaves the same way);
- ``subset < 1`` keeps, per sequence (one camera of one take), one contiguous block of
  ``n = int(round(T // downsample * subset) * downsample)`` frames starting at
  ``deterministic_random(0, T - n + 1, str(T))`` - a sha256 of the *length* string, not a
  seeded RandomState - and takes every ``downsample``-th frame of it. So sequences of
  equal length (the cameras of one take) get the same block.
- ``subset == 1`` with ``downsample > 1`` keeps every ``downsample``-th frame from frame 0.

The order of the returned ids is: subjects in the order given, then the cache's sorted
ids (the reference used the pickled dict's insertion order, which a cache does not keep).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from poselift.evaluation.protocols import action_group

from .cache import Cache, SequenceInfo

__all__ = ["SplitProtocol", "PROTOCOLS", "select_sequences", "action_matches",
           "deterministic_random", "subset_slice", "Selection", "select", "action_group"]


@dataclass(frozen=True)
class SplitProtocol:
    """Train/test subjects, default action filter (None = all) and report grouping."""

    name: str
    train_subjects: tuple[str, ...]
    test_subjects: tuple[str, ...]
    actions: tuple[str, ...] | None = None
    by_subject: bool = False
    fps: float | None = None


PROTOCOLS: dict[str, SplitProtocol] = {
    "h36m": SplitProtocol("h36m", ("S1", "S5", "S6", "S7", "S8"), ("S9", "S11"), None,
                          by_subject=False, fps=50.0),
    # README recipe for HumanEva-I: one model for Walk/Jog/Box, reported per subject.
    "humaneva15": SplitProtocol("humaneva15", ("Train/S1", "Train/S2", "Train/S3"),
                                ("Validate/S1", "Validate/S2", "Validate/S3"),
                                ("Walk", "Jog", "Box"), by_subject=True, fps=60.0),
}


def get_protocol(name: str) -> SplitProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown split protocol {name!r}; known: {sorted(PROTOCOLS)}") from None


def action_matches(action: str, actions: Iterable[str] | None) -> bool:
    """Reference filter: no filter keeps all; otherwise a prefix match on the name."""
    if actions is None:
        return True
    actions = list(actions)
    return not actions or any(action.startswith(a) for a in actions)


def select_sequences(cache: Cache | Iterable[SequenceInfo], subjects: Sequence[str],
                     actions: Iterable[str] | None = None) -> list[str]:
    """Ids of sequences whose ``subject`` attribute is in ``subjects`` and whose ``action``
    passes the prefix filter; ordered by ``subjects``, then by id."""
    infos = list(cache)
    wanted = list(actions) if actions is not None else None
    out: list[str] = []
    for subject in subjects:
        out += sorted(i.seq_id for i in infos
                      if i.subject == subject and action_matches(i.action, wanted))
    return out


def deterministic_random(min_value: int, max_value: int, data: str) -> int:
    """The reference's hash-based integer in [min_value, max_value]: the first 4 bytes of
    sha256(data) as a little-endian uint32, scaled by (2**32 - 1)."""
    raw = int.from_bytes(hashlib.sha256(data.encode()).digest()[:4], "little", signed=False)
    return int(raw / (2 ** 32 - 1) * (max_value - min_value)) + min_value


def subset_slice(n_frames: int, subset: float = 1.0, downsample: int = 1) -> slice:
    """Frames a sequence of ``n_frames`` keeps under the reference's ``subset`` and
    ``downsample`` (see the module docstring); apply as ``x[slice]`` to 2D and 3D alike."""
    if not 0 < subset <= 1:
        raise ValueError(f"subset must be in (0, 1], got {subset}")
    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    if subset < 1:
        n = int(round(n_frames // downsample * subset) * downsample)
        start = deterministic_random(0, n_frames - n + 1, str(n_frames))
        return slice(start, start + n, downsample)
    return slice(0, n_frames, downsample)


@dataclass(frozen=True)
class Selection:
    """One selected sequence and the frames of it to use (``frames`` indexes axis 0)."""

    seq_id: str
    frames: slice
    n_frames: int  # frames after slicing


def select(cache: Cache, subjects: Sequence[str], actions: Iterable[str] | None = None,
           subset: float = 1.0, downsample: int = 1) -> list[Selection]:
    """:func:`select_sequences` plus the reference's per-sequence subset/downsample slice.
    Sequences left with zero frames are dropped (as an empty array adds nothing there)."""
    out = []
    for sid in select_sequences(cache, subjects, actions):
        t = cache.info(sid).n_frames
        sl = subset_slice(t, subset, downsample)
        n = len(range(*sl.indices(t)))
        if n > 0:
            out.append(Selection(sid, sl, n))
    return out
