"""Windows over sequences: one pure function from sequence lengths to index arrays.

A window predicts ``targets`` frames ``[t0, t0 + n_targets)`` of one segment from the
input frames ``[t0 - left, t0 + n_targets + right)``. Where that input range leaves the
segment, ``pad`` decides: ``"edge"`` replicates the first/last frame (VideoPose3D's
``np.pad(..., 'edge')``), ``"repeat_target"`` fills the whole window with the target
frame (TCMR's test-time layout for border frames), ``"none"`` drops such windows.

Segments are (sequence index, first frame, length): a sequence split at gaps in its
frame numbering gives several segments, so no window crosses a gap or a sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Windows", "make_windows", "segments_from_lengths", "split_at_gaps", "gather_indices"]

PAD_MODES = ("edge", "repeat_target", "none")


@dataclass(frozen=True)
class Windows:
    """Parallel arrays, one row per window (N windows).

    seq: (N,) sequence index; target_start: (N,) first target frame (sequence frame
    index); seg_start / seg_stop: (N,) bounds of the segment the window lives in.
    ``left``/``right``/``n_targets``/``pad`` are shared by all windows.
    """

    seq: np.ndarray
    target_start: np.ndarray
    seg_start: np.ndarray
    seg_stop: np.ndarray
    n_targets: int
    left: int
    right: int
    pad: str

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    @property
    def size(self) -> int:
        """Input frames per window."""
        return self.left + self.n_targets + self.right

    def subset(self, idx: np.ndarray) -> "Windows":
        return Windows(self.seq[idx], self.target_start[idx], self.seg_start[idx],
                       self.seg_stop[idx], self.n_targets, self.left, self.right, self.pad)


def segments_from_lengths(lengths: np.ndarray | list[int]) -> np.ndarray:
    """(S, 3) int64 array [seq, start, length] with one segment per whole sequence."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.stack([np.arange(len(lengths)), np.zeros_like(lengths), lengths], axis=1)


def split_at_gaps(frame_index: np.ndarray, seq: int = 0) -> np.ndarray:
    """Segments of one sequence split wherever ``frame_index`` does not advance by the
    sequence's usual step (3DPW drops frames silently; H36M at 25 fps steps by 2)."""
    fi = np.asarray(frame_index, dtype=np.int64)
    if fi.size == 0:
        return np.zeros((0, 3), np.int64)
    d = np.diff(fi)
    step = int(np.median(d)) if d.size else 1
    cuts = np.nonzero(d != step)[0] + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [fi.size]])
    return np.stack([np.full_like(starts, seq), starts, stops - starts], axis=1)


def make_windows(segments: np.ndarray, *, left: int, right: int, n_targets: int = 1,
                 stride: int | None = None, pad: str = "edge", centre_chunks: bool = True,
                 min_length: int = 1) -> Windows:
    """Cut segments into windows.

    Args:
        segments: (S, 3) [seq, start, length] (see ``segments_from_lengths``).
        left, right: input frames needed before / after the targets. A centred
            VideoPose3D model of receptive field RF uses left = right = (RF-1)//2; the
            causal one left = RF-1, right = 0. TCMR's 16-frame window around its middle
            target (index 8) is left = 8, right = 7.
        n_targets: frames predicted per window (VideoPose3D's chunk length ``--stride``).
        stride: distance between the first targets of consecutive windows; defaults
            to ``n_targets`` so every frame is a target exactly once.
        pad: ``"edge"``, ``"repeat_target"`` or ``"none"`` (see module docstring).
        centre_chunks: as VideoPose3D's ChunkedGenerator, spread the overhang of the
            last chunk half before the first and half after the end (targets outside
            the segment are then edge-padded too); otherwise chunks start at frame 0.
        min_length: segments shorter than this are skipped (TCMR drops < 16 frames).
    """
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    if min(left, right) < 0 or n_targets < 1:
        raise ValueError(f"invalid window: left={left}, right={right}, n_targets={n_targets}")
    stride = n_targets if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    segments = np.asarray(segments, dtype=np.int64).reshape(-1, 3)
    seqs, starts, s0, s1 = [], [], [], []
    for seq, start, length in segments:
        if length < max(min_length, 1):
            continue
        if pad == "none":
            first, last = start + left, start + length - right - n_targets
            if last < first:
                continue
            t = np.arange(first, last + 1, stride)
        else:
            n_chunks = -(-int(length - n_targets) // stride) + 1 if length > n_targets else 1
            span = (n_chunks - 1) * stride + n_targets
            offset = (span - length) // 2 if centre_chunks else 0
            t = start - offset + stride * np.arange(n_chunks)
        seqs.append(np.full(t.shape, seq))
        starts.append(t)
        s0.append(np.full(t.shape, start))
        s1.append(np.full(t.shape, start + length))
    cat = (lambda xs: np.concatenate(xs).astype(np.int64)) if seqs else (
        lambda xs: np.zeros(0, np.int64))
    return Windows(cat(seqs), cat(starts), cat(s0), cat(s1), int(n_targets), int(left),
                   int(right), pad)


def gather_indices(w: Windows, rows: np.ndarray | slice | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame indices to read for the given windows.

    Returns ``(inputs, targets, target_valid)``: (B, size) and (B, n_targets) int64 arrays
    of sequence frame indices, already padded according to ``w.pad`` (pure index maths;
    the dataset only gathers), and a (B, n_targets) bool mask that is False for target
    slots that only exist because a centred chunk overhangs the segment.
    """
    rows = np.arange(len(w)) if rows is None else rows
    t0 = w.target_start[rows][:, None]
    lo, hi = w.seg_start[rows][:, None], w.seg_stop[rows][:, None] - 1
    inputs = t0 - w.left + np.arange(w.size)[None, :]
    targets = t0 + np.arange(w.n_targets)[None, :]
    if w.pad == "repeat_target":
        # TCMR test layout: a window whose span leaves the segment becomes copies of its target.
        outside = (inputs[:, :1] < lo) | (inputs[:, -1:] > hi)
        inputs = np.where(outside, np.clip(targets[:, :1], lo, hi), inputs)
    valid = (targets >= lo) & (targets <= hi)
    return np.clip(inputs, lo, hi), np.clip(targets, lo, hi), valid
