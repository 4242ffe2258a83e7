"""The pure window function: coverage, boundaries, padding semantics (property-tested)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from poselift.datasets.windows import gather_indices, make_windows, segments_from_lengths, split_at_gaps

lengths_st = st.lists(st.integers(1, 60), min_size=1, max_size=6)


def _target_counts(w, lengths):
    _, targets, valid = gather_indices(w)
    counts = [np.zeros(n, int) for n in lengths]
    for s, t, v in zip(w.seq, targets, valid):
        np.add.at(counts[s], t[v], 1)
    return counts


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, pad=st.integers(0, 13), causal=st.booleans(), chunk=st.integers(1, 9))
def test_every_frame_is_a_target_exactly_once(lengths, pad, causal, chunk):
    left, right = (2 * pad, 0) if causal else (pad, pad)
    w = make_windows(segments_from_lengths(lengths), left=left, right=right, n_targets=chunk)
    for c in _target_counts(w, lengths):
        assert (c == 1).all()


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, left=st.integers(0, 10), right=st.integers(0, 10),
       pad=st.sampled_from(["edge", "repeat_target", "none"]), stride=st.integers(1, 5))
def test_no_window_reads_outside_its_sequence(lengths, left, right, pad, stride):
    w = make_windows(segments_from_lengths(lengths), left=left, right=right, stride=stride, pad=pad)
    inputs, targets, _ = gather_indices(w)
    n = np.asarray(lengths)[w.seq]
    assert inputs.shape == (len(w), left + 1 + right)
    assert (inputs >= 0).all() and (inputs < n[:, None]).all()
    assert (targets >= 0).all() and (targets < n[:, None]).all()
    if pad == "none":  # windows that would need padding are dropped, the rest are contiguous
        assert (np.diff(inputs, axis=1) == 1).all()


def test_edge_padding_equals_numpy_edge_pad():
    """VideoPose3D pads with np.pad(..., 'edge'); the index clipping must be the same."""
    x = np.arange(7) * 10
    w = make_windows(segments_from_lengths([7]), left=4, right=4)
    inputs, targets, _ = gather_indices(w)
    padded = np.pad(x, (4, 4), mode="edge")
    for i, row in enumerate(inputs):
        np.testing.assert_array_equal(x[row], padded[i:i + 9])
    np.testing.assert_array_equal(targets[:, 0], np.arange(7))


def test_causal_window_ends_at_its_target():
    w = make_windows(segments_from_lengths([30]), left=26, right=0)
    inputs, targets, _ = gather_indices(w)
    assert (inputs[:, -1] == targets[:, 0]).all()
    assert (inputs[10] == np.arange(-16, 11).clip(0)).all()


def test_chunks_are_centred_like_videopose3d():
    """ChunkedGenerator: ceil(T/chunk) chunks, half of the overhang before the start."""
    T, chunk = 10, 4
    w = make_windows(segments_from_lengths([T]), left=1, right=1, n_targets=chunk)
    n_chunks = (T + chunk - 1) // chunk
    offset = (n_chunks * chunk - T) // 2
    np.testing.assert_array_equal(w.target_start, np.arange(n_chunks) * chunk - offset)
    _, targets, valid = gather_indices(w)
    assert valid.sum() == T and not valid[0, 0] and not valid[-1, -1]


def test_tcmr_test_layout_repeats_the_target_at_the_borders():
    """TCMR test: one window per frame; border windows are 16 copies of their frame."""
    w = make_windows(segments_from_lengths([20]), left=8, right=7, pad="repeat_target")
    inputs, targets, _ = gather_indices(w)
    assert len(w) == 20
    assert (inputs[3] == 3).all() and (inputs[19] == 19).all()
    np.testing.assert_array_equal(inputs[10], np.arange(2, 18))
    assert (inputs[:, 8] == targets[:, 0]).all()


def test_tcmr_training_stride_and_minimum_length():
    segs = np.array([[0, 0, 40], [1, 0, 10]])  # the 10-frame video is too short for 16 frames
    w = make_windows(segs, left=8, right=7, stride=16, pad="none", min_length=16)
    assert set(w.seq.tolist()) == {0}
    np.testing.assert_array_equal(w.target_start, [8, 24])


def test_split_at_gaps_never_lets_a_window_cross_a_gap():
    fi = np.array([0, 1, 2, 3, 7, 8, 9, 10, 11, 12])  # 3DPW-style dropped frames 4..6
    segs = split_at_gaps(fi, seq=3)
    np.testing.assert_array_equal(segs, [[3, 0, 4], [3, 4, 6]])
    w = make_windows(segs, left=2, right=2)
    inputs, _, _ = gather_indices(w)
    for row in inputs:
        frames = fi[row]
        assert frames.max() - frames.min() <= 4  # all inside one contiguous run
    np.testing.assert_array_equal(split_at_gaps(np.arange(0, 20, 2)), [[0, 0, 10]])  # 25 fps step 2


@pytest.mark.parametrize("bad", [dict(left=-1, right=0), dict(left=0, right=0, n_targets=0),
                                 dict(left=0, right=0, stride=0), dict(left=0, right=0, pad="reflect")])
def test_invalid_arguments(bad):
    with pytest.raises(ValueError):
        make_windows(segments_from_lengths([5]), **bad)
