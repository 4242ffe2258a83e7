"""YOLOX person detection: frames/s of ``detect_people`` (letterbox + forward + NMS) per size,
and of ``track_people`` on synthetic walkers (``--track-people``).

Randomly initialised weights in the official layout (the speed does not depend on the values,
except NMS, which runs on however many candidates pass ``--conf``; 0.5 keeps it typical of
real footage: a handful of boxes per frame). Prints one markdown row per (model, size).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_detect.py --models nano s --sizes 416 640
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["nano", "s"], help="YOLOX sizes: nano tiny s m l x")
    p.add_argument("--sizes", nargs="+", type=int, default=[416, 640], help="letterbox sizes S")
    p.add_argument("--frames", type=int, default=16, help="timed frames per configuration")
    p.add_argument("--batch", type=int, default=4, help="frames per forward")
    p.add_argument("--conf", type=float, default=0.5, help="confidence threshold before NMS")
    p.add_argument("--height", type=int, default=720, help="frame height (px)")
    p.add_argument("--width", type=int, default=1280, help="frame width (px)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--track-people", type=int, default=0,
                   help="also time the tracker on this many synthetic people (0 = skip)")
    p.add_argument("--track-frames", type=int, default=1000, help="frames for the tracker timing")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from poselift.extract import YOLOX, detect_people
    from poselift.extract.detectors import pick_device

    dev = pick_device(a.device)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (a.height, a.width, 3), dtype=np.uint8) for _ in range(a.frames)]
    print(f"device {dev}, torch threads {torch.get_num_threads()}, frames {a.width}x{a.height}, "
          f"batch {a.batch}")
    print("| model | size | frames/s | ms/frame | boxes/frame |")
    print("|---|---:|---:|---:|---:|")
    for name in a.models:
        torch.manual_seed(0)
        model = YOLOX.from_name(name).eval()
        for size in a.sizes:
            kw = dict(size=size, conf_thre=a.conf, batch_size=a.batch, device=dev)
            detect_people(frames[:a.batch], model, **kw)  # warm-up (allocator, kernels)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = detect_people(frames, model, **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            boxes = sum(len(r) for r in res) / len(res)
            print(f"| {name} | {size} | {len(frames) / dt:.2f} | {1000 * dt / len(frames):.0f} "
                  f"| {boxes:.1f} |", flush=True)
    if a.track_people:
        bench_tracker(a.track_people, a.track_frames)


def bench_tracker(people: int, n: int) -> None:
    """People walking on sine paths that cross, with COCO-17 keypoints, 5 % detections missing."""
    from poselift.extract import track_people

    rng = np.random.default_rng(1)
    phase = rng.uniform(0, 2 * np.pi, people)
    base = rng.uniform(0.1, 0.9, (people, 17, 2)) * [60, 160]
    boxes, kps = [], []
    for f in range(n):
        cx = 640 + 500 * np.sin(phase + f / 40.0)
        cy = 360 + 30 * np.arange(people) % 200
        keep = rng.uniform(size=people) > 0.05
        b = np.stack([cx - 30, cy - 80, cx + 30, cy + 80], 1)[keep]
        k = np.concatenate([base[keep] + b[:, None, :2], np.ones((int(keep.sum()), 17, 1))], 2)
        boxes.append(b)
        kps.append(k)
    t0 = time.perf_counter()
    res = track_people(boxes, kps)
    dt = time.perf_counter() - t0
    print(f"tracker: {people} people, {n} frames: {n / dt:.0f} frames/s, {len(res.tracks)} tracks")


if __name__ == "__main__":
    main()
