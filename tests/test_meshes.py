"""Mesh export through trimesh and the OpenGL-free snapshot renderer."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import trimesh

from poselift.evaluation.meshes import export_mesh, export_meshes, render_snapshot


def _square(z: float, x0: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x0, 0, z], [x0 + 1, 0, z], [x0 + 1, 1, z], [x0, 1, z]], float)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_export_round_trip_keeps_vertex_order(tmp_path, fmt):
    v = np.random.default_rng(0).normal(size=(30, 3))
    f = np.random.default_rng(1).permutation(30).reshape(10, 3)  # every vertex referenced
    p = export_mesh(tmp_path / f"m.{fmt}", v, f)
    m = trimesh.load(p, process=False)
    np.testing.assert_allclose(m.vertices, v, atol=1e-5)
    np.testing.assert_array_equal(m.faces, f)
    paths = export_meshes(tmp_path / "seq", np.stack([v, v + 1]), f, [3, 10], fmt)
    assert [q.name for q in paths] == [f"frame_000003.{fmt}", f"frame_000010.{fmt}"]
    with pytest.raises(ValueError, match="faces index vertices outside"):
        export_mesh(tmp_path / "bad.obj", v, f + 30)
    with pytest.raises(ValueError, match="must be .obj or .ply"):
        export_mesh(tmp_path / "bad.stl", v, f)


def test_snapshot_painters_order_and_skeleton(tmp_path):
    near, fn = _square(1.0, 0.0)
    far, ff = _square(2.0, 0.5)
    verts = np.concatenate([near, far])
    faces = np.concatenate([fn, ff + 4])
    joints = np.array([[0.0, 0.0, 0.0], [1.5, 1.0, 0.0]])
    img = render_snapshot(tmp_path / "s.png", verts, faces, joints=joints, bones=[(1, 0)], size=200,
                          color=(0, 0, 250), background=(255, 255, 255))
    assert img.shape == (200, 200, 3) and (tmp_path / "s.png").stat().st_size > 0
    # overlap region x in [0.5, 1]: the near square must be on top; both face the viewer, so
    # the overlap's colour equals the near square's unique area colour.
    scale = 180 / 1.5
    y = int(10 + 0.3 * scale)
    x_overlap, x_near_only = int(10 + 0.75 * scale), int(10 + 0.25 * scale)
    np.testing.assert_array_equal(img[y, x_overlap], img[y, x_near_only])
    assert tuple(img[y, x_near_only]) == (0, 0, 250)
    # skeleton line drawn in red-ish over the mesh, background elsewhere
    mid = (np.array([10, 10]) + (joints[0, :2] + joints[1, :2]) / 2 * scale).astype(int)
    px = img[mid[1] - 2:mid[1] + 3, mid[0] - 2:mid[0] + 3].reshape(-1, 3)
    assert any(p[2] > 150 and p[0] < 100 and p[1] < 100 for p in px)
    assert tuple(img[5, 195]) == (255, 255, 255)


def test_snapshot_of_occluded_far_face():
    near, fn = _square(1.0, 0.0)
    far, ff = _square(3.0, 0.0)  # exactly behind the near square
    verts = np.concatenate([far, near])
    faces = np.concatenate([ff, fn + 4])
    a = render_snapshot(None, verts, faces, size=64)
    b = render_snapshot(None, near, fn, size=64)
    # the far square is completely hidden (edges differ only by anti-aliasing)
    np.testing.assert_array_equal(a[6:-6, 6:-6], b[6:-6, 6:-6])


def test_zbuffer_nearer_face_wins_whatever_the_order():
    from poselift.evaluation.meshes import rasterize

    # Two triangles over the same pixels; A's depth rises from 0 (x = 0) to 2 (x = 40), B is flat
    # at 1: A is nearer left of x = 20, B right of it. Mean depths are equal, so only a per-pixel
    # z-test (not a painter's order) gets both halves right.
    a = np.array([[0, 0, 0.0], [40, 0, 2.0], [0, 40, 0.0]])
    b = np.array([[0, 0, 1.0], [40, 0, 1.0], [0, 40, 1.0]])
    for verts in (np.concatenate([a, b]), np.concatenate([b, a])):
        first_is_a = verts[1, 2] == 2.0
        zbuf, fid = rasterize(verts, np.array([[0, 1, 2], [3, 4, 5]]), 48, 48)
        face_a, face_b = (0, 1) if first_is_a else (1, 0)
        assert fid[5, 10] == face_a and abs(zbuf[5, 10] - 0.5) < 1e-9   # depth 2 * 10 / 40
        assert fid[5, 30] == face_b and abs(zbuf[5, 30] - 1.0) < 1e-9
        assert fid[45, 45] == -1 and np.isinf(zbuf[45, 45])
        assert fid[0, 0] >= 0 and fid[39, 1] >= 0 and fid[30, 30] == -1  # outside the hypotenuse


def test_overlay_changes_only_the_silhouette():
    from poselift.evaluation.meshes import overlay_mesh

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    before = img.copy()
    tri = np.array([[10.3, 5.2, 1.0], [70.6, 20.1, 1.5], [25.4, 55.7, 2.0]])
    mask = overlay_mesh(img, tri, np.array([[0, 1, 2]]), color=(0, 255, 0), alpha=0.5)
    changed = (img != before).any(-1)
    poly = tri[:, :2].astype(np.float32).reshape(-1, 1, 2)
    inside = np.array([[cv2.pointPolygonTest(poly, (float(x), float(y)), True) > 1e-6 for x in range(80)]
                       for y in range(60)])
    edge = np.array([[abs(cv2.pointPolygonTest(poly, (float(x), float(y)), True)) <= 1e-6 for x in range(80)]
                     for y in range(60)])
    assert not (changed & ~mask).any()                    # nothing outside the silhouette moves
    assert ((mask == inside) | edge).all()               # the silhouette is the projected triangle
    # semi-transparent: half the frame, half the shaded colour
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    shade = 0.3 + 0.7 * abs(n[2]) / np.linalg.norm(n)
    y, x = 20, 30
    want = np.round(0.5 * np.array([0, 255, 0]) * shade + 0.5 * before[y, x])
    np.testing.assert_array_equal(img[y, x], want.astype(np.uint8))
