"""CacheWindowDataset: lazy vs preloaded gathering, flips, frame selections, workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache, CacheHeader, CacheWriter
from poselift.datasets.joints import H36M17
from poselift.datasets.window_dataset import CacheWindowDataset, Field, FlipRule
from poselift.datasets.windows import make_windows, segments_from_lengths

LENGTHS = {"a": 23, "b": 9, "c": 31}


@pytest.fixture()
def caches(tmp_path):
    rng = np.random.default_rng(0)
    kp_hdr = CacheHeader(kind="keypoints2d", dataset="unit", joint_set="h36m17")
    ft_hdr = CacheHeader(kind="features", dataset="unit")
    data = {}
    with CacheWriter(tmp_path / "kp.h5", kp_hdr) as wk, CacheWriter(tmp_path / "ft.h5", ft_hdr) as wf:
        for sid, n in LENGTHS.items():
            kp = rng.normal(size=(n, 17, 2)).astype(np.float32)
            ft = rng.normal(size=(n, 64)).astype(np.float16)
            wk.write_sequence(sid, {"keypoints": kp})
            wf.write_sequence(sid, {"features": ft})
            data[sid] = (kp, ft)
    return Cache(tmp_path / "kp.h5"), Cache(tmp_path / "ft.h5"), data


def _dataset(caches, preload: bool, flip=None, frames=None):
    kp_cache, ft_cache, _ = caches
    ids = list(LENGTHS)
    lengths = [LENGTHS[s] if frames is None else len(range(*frames[s].indices(LENGTHS[s]))) for s in ids]
    w = make_windows(segments_from_lengths(lengths), left=3, right=3)
    fields = {"kp": Field(kp_cache, "keypoints", preload=preload, flip=FlipRule.for_joint_set("h36m17")),
              "ft": Field(ft_cache, "features", at="targets", preload=preload)}
    return CacheWindowDataset(fields, ids, w, flip=flip, frames=frames)


def test_lazy_and_preloaded_gathers_are_identical_and_edge_padded(caches):
    lazy, pre = _dataset(caches, False), _dataset(caches, True)
    idx = np.arange(len(lazy))
    a, b = lazy.get_batch(idx), pre.get_batch(idx)
    for k in ("kp", "ft", "seq", "target_frames"):
        torch.testing.assert_close(a[k], b[k])
    _, _, data = caches
    # window 0 of sequence "a": frames -3..3 clipped to 0..3 (edge replication)
    np.testing.assert_array_equal(a["kp"][0].numpy(), data["a"][0][[0, 0, 0, 0, 1, 2, 3]])
    assert a["ft"].dtype == torch.float32 and a["ft"].shape == (len(lazy), 1, 64)


def test_double_flip_lists_each_window_twice_and_mirrors_joints(caches):
    plain, dbl = _dataset(caches, True), _dataset(caches, True, flip="double")
    assert len(dbl) == 2 * len(plain)
    n = len(plain)
    x = plain.get_batch([5])["kp"][0].numpy()
    f = dbl.get_batch([n + 5])
    assert bool(f["flipped"][0])
    expected = x[:, H36M17.flip_permutation()].copy()
    expected[..., 0] *= -1
    np.testing.assert_allclose(f["kp"][0].numpy(), expected)
    torch.testing.assert_close(f["ft"], plain.get_batch([5])["ft"])  # no flip rule: unchanged


def test_random_flip_is_reproducible_per_epoch(caches):
    ds = _dataset(caches, True, flip="random")
    ds.set_epoch(3)
    m1 = ds.get_batch(np.arange(len(ds)))["flipped"]
    m2 = ds.get_batch(np.arange(len(ds)))["flipped"]
    ds.set_epoch(4)
    m3 = ds.get_batch(np.arange(len(ds)))["flipped"]
    assert torch.equal(m1, m2) and not torch.equal(m1, m3) and 0 < int(m1.sum()) < len(ds)


def test_frame_selection_lazy_equals_preloaded(caches):
    frames = {s: slice(1, None, 2) for s in LENGTHS}
    lazy, pre = _dataset(caches, False, frames=frames), _dataset(caches, True, frames=frames)
    a, b = lazy.get_batch(np.arange(len(lazy))), pre.get_batch(np.arange(len(pre)))
    torch.testing.assert_close(a["kp"], b["kp"])
    _, _, data = caches
    np.testing.assert_array_equal(a["ft"][0, 0].numpy(), data["a"][1][1].astype(np.float32))


def test_dataloader_workers_open_their_own_handles(caches):
    ds = _dataset(caches, False)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False,
                                         collate_fn=lambda b: b, multiprocessing_context="fork")
    got = torch.cat([b["ft"] for b in loader])
    torch.testing.assert_close(got, ds.get_batch(np.arange(len(ds)))["ft"])


def test_length_mismatch_between_caches_is_an_error(tmp_path, caches):
    kp_cache, _, _ = caches
    with CacheWriter(tmp_path / "short.h5", CacheHeader(kind="features", dataset="unit")) as w:
        for sid, n in LENGTHS.items():
            w.write_sequence(sid, {"features": np.zeros((n - (sid == "b"), 4), np.float16)})
    w = make_windows(segments_from_lengths(list(LENGTHS.values())), left=1, right=1)
    with pytest.raises(Exception, match="sequence 'b'.*has 8 frames"):
        CacheWindowDataset({"kp": Field(kp_cache, "keypoints"), "ft": Field(Cache(tmp_path / "short.h5"), "features")},
                           list(LENGTHS), w)
