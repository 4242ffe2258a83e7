"""Camera model: screen normalisation, quaternions, packaged parameters, projection, flip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from poselift.datasets.cameras import (CAMERA_JSON, Camera, camera_ids, camera_to_world,
                                       flip_camera_params, image_coordinates, load_cameras,
                                       normalize_screen_coordinates, project_to_2d,
                                       project_to_2d_linear, qinverse, qrot, world_to_camera)

RAW = json.loads(CAMERA_JSON.read_text())


def _rot(q_wxyz: np.ndarray) -> np.ndarray:
    """3x3 matrix of a (w, x, y, z) quaternion via scipy (which wants x, y, z, w)."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    return Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()


def _pixel_projection(xc: np.ndarray, f, c, k, p) -> np.ndarray:
    """Independent statement of the reference distortion in pixel units, written per axis."""
    x, y = xc[..., 0] / xc[..., 2], xc[..., 1] / xc[..., 2]
    r2 = x * x + y * y
    radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
    common = radial + p[0] * x + p[1] * y
    xd, yd = x * common + p[0] * r2, y * common + p[1] * r2
    return np.stack([f[0] * xd + c[0], f[1] * yd + c[1]], axis=-1)


def test_normalize_screen_coordinates_documented_values() -> None:
    pts = np.array([[0.0, 0.0], [640.0, 480.0], [320.0, 240.0]], dtype=np.float32)
    out = normalize_screen_coordinates(pts, 640, 480)
    np.testing.assert_allclose(out, [[-1, -0.75], [1, 0.75], [0, 0]], atol=1e-7)
    assert out.dtype == np.float32
    t = normalize_screen_coordinates(torch.from_numpy(pts), 640, 480)
    np.testing.assert_allclose(t.numpy(), out, atol=1e-7)
    np.testing.assert_allclose(image_coordinates(out, 640, 480), pts, atol=1e-4)
    np.testing.assert_allclose(image_coordinates(t, 640, 480).numpy(), pts, atol=1e-4)
    with pytest.raises(ValueError, match="last dim must be 2"):
        normalize_screen_coordinates(np.zeros((3, 3)), 640, 480)


def test_qrot_matches_rotation_matrix_and_inverse() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    v = rng.normal(size=(5, 3))
    expect = np.stack([_rot(qi) @ vi for qi, vi in zip(q, v)])
    np.testing.assert_allclose(qrot(q, v), expect, atol=1e-12)
    np.testing.assert_allclose(qrot(torch.from_numpy(q), torch.from_numpy(v)).numpy(), expect,
                               atol=1e-12)
    np.testing.assert_allclose(qrot(qinverse(q), qrot(q, v)), v, atol=1e-12)


def test_world_camera_round_trip_and_independent_formula() -> None:
    cam = load_cameras("h36m")["S9"][2]
    rng = np.random.default_rng(1)
    world = rng.uniform([-1, -1, 0], [1, 1, 1.8], size=(6, 17, 3))
    xc = world_to_camera(world, cam.orientation, cam.translation)
    r = _rot(cam.orientation)
    np.testing.assert_allclose(xc, (world - cam.translation) @ r, atol=1e-6)  # R^T (X - t)
    np.testing.assert_allclose(camera_to_world(xc, cam.orientation, cam.translation), world,
                               atol=1e-6)
    tt = cam.world_to_camera(torch.from_numpy(world))
    assert isinstance(tt, torch.Tensor) and tt.shape == (6, 17, 3)
    np.testing.assert_allclose(tt.numpy(), xc, atol=1e-6)
    assert (xc[..., 2] > 2).all()  # the subject is several metres in front of the camera


def test_h36m_packaged_parameters_normalised_like_reference() -> None:
    cams = load_cameras("h36m")
    assert sorted(cams) == ["S1", "S11", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"]
    assert camera_ids("h36m") == ["54138969", "55011271", "58860488", "60457274"]
    c0 = cams["S1"][0]
    ri, re = RAW["h36m"]["intrinsic"][0], RAW["h36m"]["extrinsic"]["S1"][0]
    assert (c0.res_w, c0.res_h, c0.image_size) == (1000, 1002, [1000, 1002])
    expect = [ri["focal_length"][0] / 500, ri["focal_length"][1] / 500,
              ri["center"][0] / 500 - 1, ri["center"][1] / 500 - 1002 / 1000,
              *ri["radial_distortion"], *ri["tangential_distortion"]]
    assert c0.intrinsic.dtype == np.float32 and c0.intrinsic.shape == (9,)
    np.testing.assert_allclose(c0.intrinsic, expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c0.translation, np.array(re["translation"]) / 1000, rtol=1e-6)
    back = Camera.from_attrs(json.loads(json.dumps(c0.to_attrs())))
    np.testing.assert_array_equal(back.intrinsic, c0.intrinsic)
    np.testing.assert_array_equal(back.orientation, c0.orientation)
    assert back.id == "54138969" and back.index == 0


def test_humaneva_cameras_prefixed_subjects_no_intrinsics() -> None:
    cams = load_cameras("humaneva15")
    for name in ("Train/S1", "Validate/S1", "Unlabeled/Train/S2", "Unlabeled/S3"):
        assert len(cams[name]) == 3
    assert cams["Train/S1"] is cams["Validate/S1"]
    assert all(c.intrinsic is None and c.image_size == [640, 480] for c in cams["Train/S2"])
    assert [c.id for c in cams["Train/S3"]] == ["C1", "C2", "C3"]
    assert not cams["Train/S4"][0].has_extrinsics
    with pytest.raises(ValueError, match="no extrinsics"):
        cams["Train/S4"][0].world_to_camera(np.zeros((1, 3)))
    with pytest.raises(KeyError, match="no packaged cameras"):
        load_cameras("mpi_inf_3dhp")


def test_project_to_2d_matches_pixel_model_of_every_h36m_camera() -> None:
    rng = np.random.default_rng(2)
    world = rng.uniform([-1, -1, 0], [1, 1, 1.8], size=(4, 17, 3))
    for i, cam in enumerate(load_cameras("h36m")["S5"]):
        ri = RAW["h36m"]["intrinsic"][i]
        xc = cam.world_to_camera(world)
        pix = _pixel_projection(xc.astype(np.float64), ri["focal_length"], ri["center"],
                                ri["radial_distortion"], ri["tangential_distortion"])
        norm = project_to_2d(xc[None].astype(np.float64), cam.intrinsic[None].astype(np.float64))[0]
        np.testing.assert_allclose(image_coordinates(norm, cam.res_w, cam.res_h), pix, atol=1e-3)
        np.testing.assert_allclose(norm, normalize_screen_coordinates(pix, cam.res_w, cam.res_h),
                                   atol=1e-6)


def test_project_batched_per_row_camera_clamp_and_linear() -> None:
    cams = load_cameras("h36m")["S1"]
    params = torch.tensor(np.stack([c.intrinsic for c in cams[:2]]))
    x = torch.rand(2, 5, 17, 3, generator=torch.Generator().manual_seed(0)) * 0.4 - 0.2
    x[..., 2] += 4.0
    out = project_to_2d(x, params)
    assert out.shape == (2, 5, 17, 2) and out.dtype == torch.float32
    alone = project_to_2d(x[1:], params[1:])
    torch.testing.assert_close(out[1:], alone)
    # Linear = pinhole part; equals the full model when k = p = 0.
    lin = project_to_2d_linear(x, params)
    xx = x[..., :2] / x[..., 2:]
    torch.testing.assert_close(lin, params[:, None, None, :2] * xx + params[:, None, None, 2:4])
    nodist = params.clone()
    nodist[:, 4:] = 0
    torch.testing.assert_close(project_to_2d(x, nodist), project_to_2d_linear(x, nodist))
    # Perspective-divided coordinates are clamped to [-1, 1].
    far = torch.tensor([[[5.0, -7.0, 1.0]]])
    edge = torch.tensor([[[1.0, -1.0, 1.0]]])
    torch.testing.assert_close(project_to_2d(far, params[:1]), project_to_2d(edge, params[:1]))


def test_flip_mirrors_projection_and_gradients_flow() -> None:
    cam = torch.tensor(load_cameras("h36m")["S6"][3].intrinsic)[None].double()
    flipped = flip_camera_params(cam)
    assert torch.equal(flipped[0, [2, 7]], -cam[0, [2, 7]])
    others = [0, 1, 3, 4, 5, 6, 8]
    assert torch.equal(flipped[0, others], cam[0, others])
    assert cam[0, 2] != flipped[0, 2]  # the input is not modified
    x = torch.tensor([[[0.3, -0.2, 3.0], [-0.4, 0.5, 4.5]]], dtype=torch.float64, requires_grad=True)
    mirror = x.detach() * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    for proj in (project_to_2d, project_to_2d_linear):
        a, b = proj(x.detach(), cam), proj(mirror, flipped)
        torch.testing.assert_close(b[..., 0], -a[..., 0])
        torch.testing.assert_close(b[..., 1], a[..., 1])
    project_to_2d(x, cam).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    npflip = flip_camera_params(cam.numpy())
    np.testing.assert_array_equal(npflip, flipped.numpy())


def test_projection_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"camera_params must be \(N, 9\)"):
        project_to_2d(torch.ones(2, 3, 3), torch.ones(2, 8))
    with pytest.raises(ValueError, match="2 point sets but 1 cameras"):
        project_to_2d(torch.ones(2, 3, 3), torch.ones(1, 9))
    with pytest.raises(ValueError, match=r"\(N, \.\.\., 3\)"):
        project_to_2d(torch.ones(2, 3, 2), torch.ones(2, 9))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_projection_on_gpu_matches_cpu() -> None:
    cam = torch.tensor(load_cameras("h36m")["S1"][0].intrinsic)[None]
    x = torch.tensor([[[0.1, 0.2, 3.0], [-0.3, 0.1, 4.0]]])
    torch.testing.assert_close(project_to_2d(x.cuda(), cam.cuda()).cpu(), project_to_2d(x, cam))
    w2c = world_to_camera(x.cuda(), load_cameras("h36m")["S1"][0].orientation,
                          load_cameras("h36m")["S1"][0].translation)
    assert w2c.device.type == "cuda"
