"""Procedural H36M-17 motion for the built-in demo (no mocap data can be downloaded).

A body is a set of segment lengths (metres, adult averages scaled per subject); a motion
is a set of joint-angle curves over time; forward kinematics in a body frame that moves
and turns in the world gives (T, 17, 3) world joints, z up, in metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Body", "MOTIONS", "animate", "make_body"]


@dataclass(frozen=True)
class Body:
    """Segment lengths in metres (Human3.6M-like adult proportions)."""

    hip_half_width: float = 0.13
    thigh: float = 0.45
    shin: float = 0.44
    pelvis_to_spine: float = 0.23
    spine_to_thorax: float = 0.25
    thorax_to_nose: float = 0.12
    nose_to_head: float = 0.11
    shoulder_half_width: float = 0.16
    shoulder_drop: float = 0.03
    upper_arm: float = 0.28
    forearm: float = 0.25


def make_body(scale: float, limb_ratio: float = 1.0) -> Body:
    """A subject: overall ``scale`` and relative limb length ``limb_ratio``."""
    b = Body()
    limbs = {"thigh", "shin", "upper_arm", "forearm"}
    return Body(**{k: v * scale * (limb_ratio if k in limbs else 1.0) for k, v in b.__dict__.items()})


@dataclass(frozen=True)
class Angles:
    """Per-frame angles (radians) and root motion; each field (T,) unless noted."""

    hip_swing: np.ndarray        # (T, 2) [right, left] forward swing of the thigh
    knee_flex: np.ndarray        # (T, 2)
    shoulder_swing: np.ndarray   # (T, 2) forward swing of the upper arm
    shoulder_abduct: np.ndarray  # (T, 2) sideways raise
    elbow_flex: np.ndarray       # (T, 2)
    lean: np.ndarray             # forward trunk lean
    pelvis_drop: np.ndarray      # metres
    heading: np.ndarray          # yaw of the body frame in the world
    root_xy: np.ndarray          # (T, 2) world position of the pelvis on the ground plane


def _gait(t: np.ndarray, freq: float, stride: float, knee: float, arm: float, speed: float,
          bounce: float, lean: float) -> Angles:
    ph = 2 * np.pi * freq * t
    sw = stride * np.stack([np.sin(ph), np.sin(ph + np.pi)], 1)
    kf = knee * np.stack([np.clip(np.sin(ph - 0.6), 0, None), np.clip(np.sin(ph + np.pi - 0.6), 0, None)], 1)
    arms = arm * np.stack([np.sin(ph + np.pi), np.sin(ph)], 1)
    z = np.zeros_like(t)
    return Angles(sw, kf + 0.05, arms, np.full((len(t), 2), 0.12), 0.3 + 0.6 * arm * np.ones((len(t), 2)),
                  np.full_like(t, lean), bounce * (1 - np.cos(2 * ph)) / 2,
                  z, np.stack([speed * t, z], 1))


def walk(t: np.ndarray) -> Angles:
    return _gait(t, 0.9, 0.35, 0.7, 0.3, 1.3, 0.03, 0.05)


def jog(t: np.ndarray) -> Angles:
    return _gait(t, 1.4, 0.55, 1.3, 0.6, 1.8, 0.06, 0.2)


def turn(t: np.ndarray) -> Angles:
    """Walking on a circle of radius 1.5 m: the heading turns with the path."""
    a = walk(t)
    w = 1.3 / 1.5
    heading = w * t
    root = 1.5 * np.stack([np.sin(heading), 1 - np.cos(heading)], 1)
    return Angles(a.hip_swing, a.knee_flex, a.shoulder_swing, a.shoulder_abduct, a.elbow_flex,
                  a.lean, a.pelvis_drop, heading, root)


def arms(t: np.ndarray) -> Angles:
    """Standing, arms raised sideways and forward alternately, with elbow bends."""
    ph = 2 * np.pi * 0.5 * t
    z2 = np.zeros((len(t), 2))
    ab = np.stack([1.3 * (1 - np.cos(ph)) / 2, 1.3 * (1 - np.cos(ph + 1.0)) / 2], 1)
    sw = np.stack([0.9 * np.sin(0.5 * ph) ** 2, 0.9 * np.cos(0.5 * ph) ** 2], 1)
    el = 0.2 + 1.0 * np.stack([np.sin(ph) ** 2, np.cos(ph) ** 2], 1)
    z = np.zeros_like(t)
    return Angles(z2, z2 + 0.05, sw, ab, el, z + 0.02, z, 0.3 * np.sin(0.3 * ph), np.zeros((len(t), 2)))


def squat(t: np.ndarray) -> Angles:
    """Squats: hips and knees flex together, the pelvis drops, the trunk leans, arms forward."""
    d = (1 - np.cos(2 * np.pi * 0.45 * t)) / 2
    hip = np.stack([1.4 * d, 1.4 * d], 1)
    knee = np.stack([2.1 * d, 2.1 * d], 1)
    z = np.zeros_like(t)
    sw = np.stack([1.3 * d, 1.3 * d], 1)
    return Angles(hip, knee, sw, np.full((len(t), 2), 0.1), np.full((len(t), 2), 0.2), 0.5 * d,
                  0.42 * d, z, np.zeros((len(t), 2)))


MOTIONS = {"Walking": walk, "Jogging": jog, "Turning": turn, "Arms": arms, "Squat": squat}


def _limb(start: np.ndarray, down: np.ndarray, fwd: np.ndarray, side: np.ndarray, swing: np.ndarray,
          abduct: np.ndarray, length: float) -> np.ndarray:
    """End point of a segment hanging along ``down``, swung forward and raised sideways."""
    d = (down * (np.cos(swing) * np.cos(abduct))[:, None] + fwd * np.sin(swing)[:, None]
         + side * (np.cos(swing) * np.sin(abduct))[:, None])
    return start + length * d


def animate(body: Body, motion: str, n_frames: int, fps: float, phase: float = 0.0) -> np.ndarray:
    """World joints (T, 17, 3) in metres, H36M-17 order, z up, feet near z = 0."""
    t = np.arange(n_frames) / fps + phase
    a = MOTIONS[motion](t)
    T = n_frames
    up = np.tile([0.0, 0.0, 1.0], (T, 1))
    fwd = np.stack([np.cos(a.heading), np.sin(a.heading), np.zeros(T)], 1)
    right = np.stack([np.sin(a.heading), -np.cos(a.heading), np.zeros(T)], 1)
    leg_len = body.thigh + body.shin
    root_xy = a.root_xy - a.root_xy.mean(0)  # keep the subject centred in the capture volume
    pelvis = np.concatenate([root_xy, (leg_len + 0.03 - a.pelvis_drop)[:, None]], 1)
    J = np.zeros((T, 17, 3))
    J[:, 0] = pelvis
    for side, (hip_i, knee_i, ankle_i), k in ((1, (1, 2, 3), 0), (-1, (4, 5, 6), 1)):
        hip = pelvis + side * body.hip_half_width * right
        knee = _limb(hip, -up, fwd, side * right, a.hip_swing[:, k], np.zeros(T), body.thigh)
        ankle = _limb(knee, -up, fwd, side * right, a.hip_swing[:, k] - a.knee_flex[:, k],
                      np.zeros(T), body.shin)
        J[:, hip_i], J[:, knee_i], J[:, ankle_i] = hip, knee, ankle
    trunk = up * np.cos(a.lean)[:, None] + fwd * np.sin(a.lean)[:, None]
    J[:, 7] = pelvis + body.pelvis_to_spine * trunk
    J[:, 8] = J[:, 7] + body.spine_to_thorax * trunk
    J[:, 9] = J[:, 8] + body.thorax_to_nose * trunk + 0.06 * fwd
    J[:, 10] = J[:, 9] + body.nose_to_head * trunk - 0.03 * fwd
    for side, (sh_i, el_i, wr_i), k in ((-1, (11, 12, 13), 1), (1, (14, 15, 16), 0)):
        sh = J[:, 8] + side * body.shoulder_half_width * right - body.shoulder_drop * trunk
        el = _limb(sh, -trunk, fwd, side * right, a.shoulder_swing[:, k], a.shoulder_abduct[:, k],
                   body.upper_arm)
        wr = _limb(el, -trunk, fwd, side * right, a.shoulder_swing[:, k] + a.elbow_flex[:, k],
                   a.shoulder_abduct[:, k], body.forearm)
        J[:, sh_i], J[:, el_i], J[:, wr_i] = sh, el, wr
    # ground contact: the lower ankle sits 3 cm above the floor in every frame
    J[..., 2] -= (np.minimum(J[:, 3, 2], J[:, 6, 2]) - 0.03)[:, None]
    return J.astype(np.float32)
