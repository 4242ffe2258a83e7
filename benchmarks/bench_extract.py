"""Extraction throughput (features: ResNet/HMR; keypoints: FastPose + SIKR): end-to-end (decode + crop + model + cache write) vs forward only.

Writes a synthetic mp4v video into a temporary folder, then measures on the same machine:
  * forward-only: BackboneRunner on pre-made uint8 crops (normalise + backbone + copy back);
  * end-to-end: extract_features (or, with --model fastpose, extract_keypoints) over the video
    into a fresh cache: decode + crop in workers, model, decode, cache write.
Use --frames >= 20 x --batch-size so that start-up does not dominate.
Prints one markdown table row (header with --header). Keep --frames small on CPU.

Run it as a console-free script from outside the repo root (the folder ``datasets/`` would shadow
imports otherwise), e.g.::

    cd /tmp && OMP_NUM_THREADS=2 /work/main/.venv/bin/python /work/main/benchmarks/bench_extract.py \
        --frames 64 --batch-size 16 --workers 1 --header
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from poselift.extract.backbones import BACKBONES, load_spin_backbone, load_torchvision_resnet
from poselift.extract.contracts import PreprocessContract
from poselift.extract.estimators.contracts import fastpose_contract
from poselift.extract.estimators.fastpose import FASTPOSE_VARIANTS
from poselift.extract.features import BackboneRunner, SequenceSpec, extract_features
from poselift.extract.keypoint_runners import SikrRunner
from poselift.extract.keypoints import extract_keypoints

HEADER = ("| device | backbone | width | crop | batch | workers | compile | video | forward img/s "
          "| end-to-end frames/s | e2e / forward |\n|---|---|---|---|---|---|---|---|---|---|---|")


def make_video(path: Path, n: int, w: int, h: int) -> np.ndarray:
    """A moving rectangle on noise; returns its xyxy boxes (n, 4)."""
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    assert vw.isOpened(), "cv2.VideoWriter('mp4v') did not open"
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    boxes = []
    for i in range(n):
        f = bg.copy()
        x = int((w - w // 4) * i / max(n - 1, 1))
        f[h // 4: 3 * h // 4, x: x + w // 4] = (40, 40, 220)
        vw.write(f)
        boxes.append([x, h // 4, x + w // 4, 3 * h // 4])
    vw.release()
    return np.asarray(boxes, np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=64, help="frames in the synthetic video (default 64)")
    p.add_argument("--resolution", default="1280x720", help="video WxH (default 1280x720)")
    p.add_argument("--model", default="features", choices=["features", "fastpose"],
                   help="features = --backbone into a features cache; fastpose = FastPose-R50 SIKR keypoints")
    p.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES), help="backbone variant")
    p.add_argument("--base-width", type=int, default=64, help="64 = real size")
    p.add_argument("--weights", help="optional checkpoint (torchvision or SPIN); random init otherwise")
    p.add_argument("--crop-size", type=int, default=224, help="crop side for the feature model (default 224)")
    p.add_argument("--batch-size", type=int, default=16, help="crops per model call (default 16)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers for decode + crop")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "auto"],
                   help="feature backbone precision (default: fp16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--repeats", type=int, default=3, help="forward-only timing repeats (best is kept)")
    p.add_argument("--header", action="store_true", help="print the table header first")
    a = p.parse_args()
    w, h = (int(v) for v in a.resolution.lower().split("x"))

    torch.manual_seed(0)
    if a.model == "fastpose":
        return bench_fastpose(a, w, h)
    if a.weights:
        loader = load_spin_backbone if a.backbone == "hmr" else load_torchvision_resnet
        model = loader(a.weights)
    else:
        model = BACKBONES[a.backbone](base_width=a.base_width)
    contract = PreprocessContract(crop_size=a.crop_size, bbox_scale=1.2)
    runner = BackboneRunner(model, contract, a.device, compile=a.compile, precision=a.precision)
    crops = torch.from_numpy(np.random.default_rng(1).integers(
        0, 256, (a.batch_size, a.crop_size, a.crop_size, 3), dtype=np.uint8))
    if runner.device.type == "cuda":
        crops = crops.pin_memory()
    runner(crops)  # warm-up (and compilation)
    best = float("inf")
    n_batches = max(1, a.frames // a.batch_size)
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(n_batches):
            runner(crops)  # includes the copy back to the host, as in extraction
        best = min(best, time.perf_counter() - t0)
    fwd = n_batches * a.batch_size / best

    with tempfile.TemporaryDirectory() as d:
        video = Path(d) / "bench.mp4"
        boxes = make_video(video, a.frames, w, h)
        t0 = time.perf_counter()
        r = extract_features([SequenceSpec("bench", video, boxes)], Path(d) / "f.h5", runner.model, contract,
                             batch_size=a.batch_size, num_workers=a.workers, device=a.device,
                             weights_sha256="bench", compile=a.compile, progress=False,
                             precision=a.precision)
        e2e = r.frames / (time.perf_counter() - t0)
        assert r.written == ["bench"], r.failed
    if a.header:
        print(HEADER)
    dev = torch.cuda.get_device_name() if runner.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    dev += f", {a.precision}" if a.precision else ""
    print(f"| {dev} | {a.backbone} | {a.base_width} | {a.crop_size} | {a.batch_size} | {a.workers} | "
          f"{'yes' if a.compile else 'no'} | {a.frames} x {w}x{h} mp4v | {fwd:.1f} | {e2e:.1f} | {e2e / fwd:.2f} |")


def bench_fastpose(a: argparse.Namespace, w: int, h: int) -> None:
    """FastPose-R50 (random init, COCO-17): forward-only = normalise + model + SIKR decode on
    pre-made uint8 crops; end-to-end = extract_keypoints over a single-person video."""
    model = FASTPOSE_VARIANTS["fastpose_r50"](17)
    contract = fastpose_contract()
    runner = SikrRunner(model, contract, a.device, precision=a.precision)
    ch, cw = contract.crop_hw
    crops = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (a.batch_size, ch, cw, 3), dtype=np.uint8))
    if runner.device.type == "cuda":
        crops = crops.pin_memory()
    cboxes = np.tile(np.array([[0, 0, 192, 256]], np.float32), (a.batch_size, 1))
    runner(crops, cboxes)
    n_batches = max(1, a.frames // a.batch_size)
    best = float("inf")
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(n_batches):
            runner(crops, cboxes)
        best = min(best, time.perf_counter() - t0)
    fwd = n_batches * a.batch_size / best
    with tempfile.TemporaryDirectory() as d:
        video = Path(d) / "bench.mp4"
        boxes = make_video(video, a.frames, w, h)
        t0 = time.perf_counter()
        r = extract_keypoints([SequenceSpec("bench", video, boxes)], Path(d) / "k.h5", runner.model, contract,
                              batch_size=a.batch_size, num_workers=a.workers, device=a.device,
                              weights_sha256="bench", progress=False, precision=a.precision)
        e2e = r.frames / (time.perf_counter() - t0)
        assert r.written == ["bench"], r.failed
    if a.header:
        print(HEADER)
    dev = torch.cuda.get_device_name() if runner.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    dev += f", {a.precision}" if a.precision else ""
    print(f"| {dev} | fastpose-r50 sikr | 64 | 256x192 | {a.batch_size} | {a.workers} | no | {a.frames} x "
          f"{w}x{h} mp4v | {fwd:.1f} | {e2e:.1f} | {e2e / fwd:.2f} |")


if __name__ == "__main__":
    main()
