"""Joint sets: trees, mirror pairs, aliases and conversions."""
from __future__ import annotations

import numpy as np
import pytest

from poselift.datasets.joints import (COCO17, H36M17, H36M32_TO_17, HALPE26, HUMANEVA15, JOINT_SETS,
                                      conversion_matrix, convert, get_joint_set)


@pytest.mark.parametrize("name", sorted({js.name for js in JOINT_SETS.values()}))
def test_every_joint_set_is_a_tree_with_consistent_mirror_pairs(name):
    js = get_joint_set(name)
    roots = [j for j, p in enumerate(js.parents) if p < 0]
    assert roots == [js.root], f"{name}: roots {roots}"
    for j in range(js.num_joints):  # every joint reaches the root without a cycle
        seen, k = set(), j
        while k >= 0:
            assert k not in seen, f"{name}: cycle through joint {k}"
            seen.add(k)
            k = js.parents[k]
    perm = js.flip_permutation()
    np.testing.assert_array_equal(perm[perm], np.arange(js.num_joints))  # an involution
    for left, right in zip(js.left, js.right):  # mirrored names where the layout names sides
        a, b = js.names[left], js.names[right]
        if a.startswith("l_") and b.startswith("r_"):
            assert a[2:] == b[2:], f"{name}: {a} paired with {b}"
    central_root = perm[js.root] == js.root  # LSP-14 has no pelvis: its root is the right hip
    for j, p in enumerate(js.parents):  # a mirrored joint's parent is mirrored too (or central)
        if central_root and p >= 0 and perm[j] != j:
            assert js.parents[perm[j]] == perm[p], f"{name}: joint {js.names[j]}"


def test_reference_layouts_match_videopose3d():
    assert H36M17.parents == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
    assert (H36M17.left, H36M17.right) == ((4, 5, 6, 11, 12, 13), (1, 2, 3, 14, 15, 16))
    assert HUMANEVA15.parents == (-1, 0, 1, 2, 3, 1, 5, 6, 0, 8, 9, 0, 11, 12, 1)
    assert (HUMANEVA15.left, HUMANEVA15.right) == ((2, 3, 4, 8, 9, 10), (5, 6, 7, 11, 12, 13))
    assert COCO17.left == (1, 3, 5, 7, 9, 11, 13, 15) and COCO17.right == (2, 4, 6, 8, 10, 12, 14, 16)
    assert H36M32_TO_17 == (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
    assert get_joint_set("h36m") is H36M17 and get_joint_set("coco") is COCO17
    with pytest.raises(KeyError, match="unknown joint set 'nope'"):
        get_joint_set("nope")


def test_coco_to_h36m_uses_hip_and_shoulder_midpoints():
    kp = np.random.default_rng(0).normal(size=(4, 17, 2))
    h = convert(kp, "coco17", "h36m17")
    c = {n: kp[:, i] for i, n in enumerate(COCO17.names)}
    np.testing.assert_allclose(h[:, 0], (c["l_hip"] + c["r_hip"]) / 2)
    np.testing.assert_allclose(h[:, 8], (c["l_shoulder"] + c["r_shoulder"]) / 2)
    np.testing.assert_allclose(h[:, 7], (h[:, 0] + h[:, 8]) / 2)  # spine between pelvis and thorax
    np.testing.assert_allclose(h[:, 1], c["r_hip"])
    np.testing.assert_allclose(h[:, 13], c["l_wrist"])
    np.testing.assert_allclose(conversion_matrix("coco17", "h36m17").sum(1), 1.0)  # affine weights


def test_halpe26_to_h36m_common_map():
    kp = np.random.default_rng(1).normal(size=(3, 26, 3))
    h = convert(kp, "halpe26", "h36m17")
    np.testing.assert_allclose(h[:, 0], kp[:, 19])                       # pelvis = Halpe hip
    np.testing.assert_allclose(h[:, 7], (kp[:, 18] + kp[:, 19]) / 2)     # spine = mean(neck, hip)
    np.testing.assert_allclose(h[:, [8, 9, 10]], kp[:, [18, 0, 17]])    # thorax, nose, head
    np.testing.assert_allclose(h[:, [14, 15, 16]], kp[:, [6, 8, 10]])   # right arm
    np.testing.assert_allclose(convert(kp, "halpe26", "coco17"), kp[:, :17])
    assert HALPE26.names[:17] == COCO17.names


def test_conversion_errors_name_the_layouts():
    with pytest.raises(ValueError, match="expected 17 joints"):
        convert(np.zeros((2, 15, 2)), "coco17", "h36m17")
    with pytest.raises(KeyError, match="no conversion from joint set 'humaneva15' to 'coco17'"):
        conversion_matrix("humaneva15", "coco17")
