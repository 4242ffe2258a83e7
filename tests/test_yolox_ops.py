"""YOLOX letterbox, NMS and postprocess against straightforward reference computations."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from poselift.extract import YOLOX, detect_people, yolox_postprocess, yolox_preprocess
from poselift.extract.detectors import batched_nms, nms, pick_device


def _ref_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Textbook greedy NMS: float32 IoU, visit by score (stable), suppress IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    keep, dead = [], set()
    for a, i in enumerate(order):
        if i in dead:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            bi, bj = boxes[i], boxes[j]
            w = max(np.float32(0), min(bi[2], bj[2]) - max(bi[0], bj[0]))
            h = max(np.float32(0), min(bi[3], bj[3]) - max(bi[1], bj[1]))
            inter = w * h
            ai = (bi[2] - bi[0]) * (bi[3] - bi[1])
            aj = (bj[2] - bj[0]) * (bj[3] - bj[1])
            if float(inter / (ai + aj - inter)) > thr:
                dead.add(j)
    return keep


def _random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, (n, 2)).astype(np.float32)
    wh = rng.uniform(5, scale / 3, (n, 2)).astype(np.float32)
    return np.concatenate([xy, xy + wh], 1), rng.uniform(0, 1, n).astype(np.float32)


def test_preprocess_letterbox_top_left_bgr_raw_pixels():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    t, r = yolox_preprocess(frame, 64)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32 and r == pytest.approx(0.32)
    resized = cv2.resize(frame, (64, 32), interpolation=cv2.INTER_LINEAR)
    # BGR kept, no scaling: channel 0 is the resized blue channel, values 0..255
    assert np.array_equal(t[:, :32, :].numpy(), resized.transpose(2, 0, 1).astype(np.float32))
    assert torch.all(t[:, 32:, :] == 114)
    tall, r2 = yolox_preprocess(frame[:, :50], 64)  # 100 x 50: width is the short side
    assert r2 == pytest.approx(0.64) and torch.all(tall[:, :, 32:] == 114)
    assert not torch.all(tall[:, :, 31] == 114)


def test_preprocess_rejects_bad_frames():
    with pytest.raises(ValueError, match="BGR frame"):
        yolox_preprocess(np.zeros((10, 10), np.uint8), 64)
    with pytest.raises(ValueError, match="uint8"):
        yolox_preprocess(np.zeros((10, 10, 3), np.float32), 64)


def test_nms_strict_threshold_ties_and_order():
    boxes = torch.tensor([[0, 0, 3, 1], [1, 0, 4, 1], [10, 10, 12, 12]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.95])
    # the first two overlap with IoU exactly 0.5: kept at thr 0.5 (strict >), suppressed below
    assert nms(boxes, scores, 0.5).tolist() == [2, 0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [2, 0]
    tie = torch.tensor([0.5, 0.5, 0.5])
    assert nms(boxes, tie, 0.49).tolist() == [0, 2]  # equal scores: input order decides


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_reference_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    b, s = _random_boxes(rng, 150)
    for thr in (0.3, 0.45, 0.6):
        assert nms(torch.from_numpy(b), torch.from_numpy(s), thr).tolist() == _ref_nms(b, s, thr)


@pytest.mark.parametrize("n", [60, 1200])  # below and above torchvision's 4000-coordinate switch
def test_batched_nms_is_per_class_nms_sorted_by_score(n):
    rng = np.random.default_rng(n)
    b, s = _random_boxes(rng, n, scale=300.0)
    cls = rng.integers(0, 3, n)
    keep = batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(cls).float(), 0.5)
    ref = []
    for c in range(3):
        idx = np.where(cls == c)[0]
        ref += [int(idx[k]) for k in _ref_nms(b[idx], s[idx], 0.5)]
    ref.sort(key=lambda i: -s[i])
    assert keep.tolist() == ref
    # same boxes, one class: boxes of other classes no longer protect each other
    assert len(nms(torch.from_numpy(b), torch.from_numpy(s), 0.5)) < len(ref)


def _ref_postprocess(out: np.ndarray, conf: float, thr: float, agnostic: bool):
    res = []
    for img in out:
        x1 = img[:, 0] - img[:, 2] / 2
        y1 = img[:, 1] - img[:, 3] / 2
        rows = np.stack([x1, y1, x1 + img[:, 2], y1 + img[:, 3]], 1)
        cconf, cpred = img[:, 5:].max(1), img[:, 5:].argmax(1)
        score = (img[:, 4] * cconf).astype(np.float32)
        m = score >= np.float32(conf)
        det = np.concatenate([rows, img[:, 4:5], cconf[:, None], cpred[:, None]], 1)[m]
        if not len(det):
            res.append(None)
            continue
        sc = score[m]
        if agnostic:
            keep = _ref_nms(det[:, :4], sc, thr)
        else:
            keep = []
            for c in np.unique(det[:, 6]):
                idx = np.where(det[:, 6] == c)[0]
                keep += [int(idx[k]) for k in _ref_nms(det[idx, :4], sc[idx], thr)]
            keep.sort(key=lambda i: -sc[i])
        res.append(det[keep])
    return res


@pytest.mark.parametrize("agnostic", [False, True])
def test_postprocess_matches_reference(agnostic):
    g = torch.Generator().manual_seed(3)
    n, a, c = 3, 200, 4
    out = torch.cat([torch.rand(n, a, 2, generator=g) * 100, torch.rand(n, a, 2, generator=g) * 30 + 4,
                     torch.rand(n, a, 1 + c, generator=g)], -1)
    out[2, :, 4] = 0.0  # an image without any candidate
    before = out.clone()
    got = yolox_postprocess(out, 0.3, 0.45, agnostic)
    assert torch.equal(out, before)  # input left untouched
    ref = _ref_postprocess(out.numpy(), 0.3, 0.45, agnostic)
    assert got[2] is None and ref[2] is None
    for g_, r_ in zip(got[:2], ref[:2]):
        assert g_.shape[1] == 7 and g_.shape[0] == len(r_) > 0
        assert np.allclose(g_.numpy(), r_, atol=1e-5)
        score = (g_[:, 4] * g_[:, 5]).numpy()
        assert np.all(np.diff(score) <= 0) and score.min() >= np.float32(0.3)


class _FixedOutputs(torch.nn.Module):
    """Test double of a YOLOX: every image yields one person and one class-1 box (model px)."""

    test_size = 64

    def forward(self, x):
        row = torch.zeros(2, 85)
        row[:, :4] = torch.tensor([[30.0, 20.0, 20.0, 10.0], [10.0, 10.0, 4.0, 4.0]])
        row[:, 4] = 0.9
        row[0, 5], row[1, 6] = 0.8, 0.99
        return row.expand(x.shape[0], 2, 85).clone()


def test_detect_people_rescales_to_frame_pixels_and_keeps_persons():
    frames = [np.zeros((100, 200, 3), np.uint8)] * 4 + [np.zeros((50, 50, 3), np.uint8)]
    res = detect_people(iter(frames), _FixedOutputs(), batch_size=3, device="cpu")
    assert len(res) == 5 and all(len(r) == 1 for r in res)
    # frame 100x200 at 64: r = 0.32; model box (20, 15, 40, 25) -> / r
    assert np.allclose(res[0].boxes, [[20 / 0.32, 15 / 0.32, 40 / 0.32, 25 / 0.32]], rtol=1e-6)
    assert np.allclose(res[4].boxes, [[20 / 1.28, 15 / 1.28, 40 / 1.28, 25 / 1.28]], rtol=1e-6)
    assert res[0].scores == pytest.approx([0.72])
    assert all(len(r) == 0 for r in detect_people(frames, _FixedOutputs(), min_score=0.8))
    with pytest.raises(ValueError, match="frame 4: yolox_preprocess: expected uint8"):
        detect_people(frames[:4] + [np.zeros((8, 8, 3), np.float32)], _FixedOutputs(), batch_size=3)


def test_detect_people_real_model_agrees_with_manual_chain():
    torch.manual_seed(0)
    model = YOLOX(0.33, 0.25, True).eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(3)]
    res = detect_people(frames, model, size=64, conf_thre=0.2, batch_size=2, device="cpu")
    x = torch.stack([yolox_preprocess(f, 64)[0] for f in frames])
    with torch.no_grad():
        dets = yolox_postprocess(model(x), 0.2, 0.45, False)
    for r, d in zip(res, dets):
        person = d[d[:, 6] == 0] if d is not None else torch.zeros(0, 7)
        assert len(r) == len(person)
        assert np.allclose(r.boxes, (person[:, :4] / 0.8).numpy(), rtol=1e-5, atol=1e-3)


def test_device_choice_falls_back_to_cpu():
    assert pick_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(None).type == expected and pick_device("cuda").type == expected


class _AutocastProbe(_FixedOutputs):
    """Records the dtype its (autocast) matmul computes in; outputs in bf16 when autocast is on."""

    seen: list = []

    def forward(self, x):
        self.seen.append((x.float().flatten(1)[:, :4] @ torch.ones(4, 4)).dtype)
        out = super().forward(x)
        return out.to(self.seen[-1])


def test_detect_people_precision_switch():
    from poselift.core.precision import PrecisionError

    frames = [np.zeros((100, 200, 3), np.uint8)] * 2
    probe = _AutocastProbe()
    fp32 = detect_people(frames, probe, device="cpu")
    bf16 = detect_people(frames, probe, device="cpu", precision="bf16")
    assert probe.seen == [torch.float32, torch.bfloat16]  # autocast only when asked (CPU default fp32)
    # the postprocess runs in float32: the same boxes up to bf16's rounding of the model outputs
    assert len(fp32[0]) == len(bf16[0]) == 1
    np.testing.assert_allclose(bf16[0].boxes, fp32[0].boxes, rtol=1e-2)
    with pytest.raises(PrecisionError, match="fp16"):
        detect_people(frames, probe, device="cpu", precision="fp16")
