"""Square crops: TCMR geometry, exact inverse mapping, bilinear warp, invalid boxes; contracts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poselift.extract.contracts import CONTRACTS, PreprocessContract
from poselift.extract.crops import (CropError, box_overlaps_image, crop, invert_affine, square_box,
                                    square_crop_affine, to_crop_coords, to_image_coords)


def test_affine_is_the_tcmr_square_crop() -> None:
    box = np.array([100.0, 50.0, 160.0, 250.0])  # w 60, h 200 -> square side 200 * 1.2 = 240
    m = square_crop_affine(box, scale=1.2, out_size=224)
    s = 224 / 240.0
    want = np.array([[s, 0, 112 - s * 130.0], [0, s, 112 - s * 150.0]])
    np.testing.assert_allclose(m, want, rtol=1e-6, atol=1e-4)
    assert square_box(box, 1.2) == (130.0, 150.0, 240.0)
    # centre/size form: size is the unscaled side (TCMR stores w = h)
    np.testing.assert_allclose(square_crop_affine(center=(130, 150), size=200, scale=1.2), m)
    np.testing.assert_allclose(to_crop_coords([130.0, 150.0], m), [112.0, 112.0], atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(cx=st.floats(-500, 3000), cy=st.floats(-500, 3000), w=st.floats(2, 1500), h=st.floats(2, 1500),
       scale=st.floats(0.5, 2.0), out=st.sampled_from([64, 192, 224, 256]))
def test_round_trip_to_image_coords_is_exact(cx, cy, w, h, scale, out) -> None:
    m = square_crop_affine(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), scale=scale, out_size=out)
    rng = np.random.default_rng(0)
    crop_pts = rng.uniform(-10, out + 10, size=(5, 17, 2))
    back = to_crop_coords(to_image_coords(crop_pts, m), m)
    assert np.abs(back - crop_pts).max() < 1e-4
    img_pts = rng.uniform(-100, 3000, size=(17, 2))
    assert np.abs(to_image_coords(to_crop_coords(img_pts, m), m) - img_pts).max() < 1e-4
    np.testing.assert_allclose(invert_affine(invert_affine(m)), m, rtol=1e-9, atol=1e-9)


def test_crop_samples_bilinearly_with_black_border() -> None:
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float64)
    ramp = (xx + 0.5 * yy).astype(np.uint8)  # linear: bilinear sampling reproduces it
    img = np.repeat(ramp[..., None], 3, axis=2)
    box = np.array([40.0, 30.0, 100.0, 90.0])
    m = square_crop_affine(box, scale=1.0, out_size=64)
    c = crop(img, m, 64)
    assert c.shape == (64, 64, 3) and c.dtype == np.uint8
    uv = np.stack(np.meshgrid(np.arange(64), np.arange(64)), -1).astype(np.float64)
    src = to_image_coords(uv, m)
    want = src[..., 0] + 0.5 * src[..., 1]
    # fixed-point warp (1/32 px) times slope <= 1.5 plus uint8 rounding
    assert np.abs(c[..., 0] - want).max() <= 1.0
    # a box hanging over the right edge: what falls outside the image is black
    m2 = square_crop_affine(np.array([140.0, 40.0, 180.0, 80.0]), out_size=40)
    c2 = crop(img, m2, 40)
    outside = to_image_coords(np.stack(np.meshgrid(np.arange(40), np.arange(40)), -1), m2)[..., 0] > 160.5
    assert outside.any() and (c2[outside] == 0).all() and (c2[~outside][:, 0] > 0).mean() > 0.9


def test_invalid_and_outside_boxes() -> None:
    with pytest.raises(CropError, match="zero or negative size"):
        square_crop_affine(np.array([10.0, 10.0, 10.0, 50.0]))
    with pytest.raises(CropError, match="4 finite numbers"):
        square_crop_affine(np.array([np.nan, 0, 10, 10]))
    with pytest.raises(CropError, match="positive finite square"):
        square_crop_affine(center=(5, 5), size=0)
    with pytest.raises(ValueError, match="either box_xyxy or center"):
        square_crop_affine(np.array([0, 0, 1, 1.0]), center=(0, 0), size=1)
    assert box_overlaps_image(np.array([10, 10, 20, 20.0]), (64, 48))
    assert not box_overlaps_image(np.array([100, 10, 120, 20.0]), (64, 48))
    # the *scaled* square decides: side 20 * 3 = 60 reaches back into the image
    assert box_overlaps_image(np.array([80, 10, 100, 30.0]), (64, 48), scale=3.0)


def test_contract_dict_round_trip_and_normalisation() -> None:
    c = CONTRACTS["tcmr-3dpw"]
    assert c.bbox_scale == 1.3 and c.crop_size == 224 and c.channel_order == "RGB"
    d = c.to_dict()
    assert d["mean"] == [0.485, 0.456, 0.406] and d["std"] == [0.229, 0.224, 0.225]
    assert d["value_scale"] == 255.0 and d["supporting_frames"] == []
    assert PreprocessContract.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown preprocessing contract field"):
        PreprocessContract.from_dict({**d, "flip": True})
    rgb = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = c.normalize(torch.from_numpy(rgb))
    assert x.shape == (2, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
    want = (rgb[0, 3, 5] / 255.0 - np.array(c.mean)) / np.array(c.std)
    np.testing.assert_allclose(x[0, :, 3, 5].numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(x.numpy(), c.normalize_numpy(rgb), rtol=1e-6, atol=1e-6)
    bgr_model = PreprocessContract(channel_order="BGR", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    y = bgr_model.normalize(torch.from_numpy(rgb))
    np.testing.assert_allclose(y[0, 0].numpy(), rgb[0, ..., 2] / 255.0 - 0.1, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="channel_order"):
        PreprocessContract(channel_order="RGBA")
