"""A synthetic SMPL-format body model for tests and demos (no licensed files needed).

``make_synthetic_smpl(dir)`` writes the files TCMR/VIBE read from their base-data folder:
``SMPL_NEUTRAL.pkl`` (or ``.npz``) with the official keys and shapes, ``J_regressor_extra.npy``
(9x6890), ``J_regressor_h36m.npy`` (17x6890) and ``smpl_mean_params.npz``. The mesh is a set of
tubes around the 24 SMPL joints of a T-pose, skinned to the bone's parent joint, so posed meshes
and regressed joints have sane magnitudes (metres). The ``.pkl`` is a plain pickle (numpy arrays
and a scipy CSC ``J_regressor``, protocol 2) that smplx itself can also read.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from poselift.datasets.joints import SMPL24

__all__ = ["make_synthetic_smpl", "SYNTH_REST_JOINTS", "NUM_VERTS", "NUM_FACES"]

NUM_VERTS = 6890
NUM_FACES = 13776
_RING = 10

# Rest joint positions (metres, y up, +x = body's left), roughly those of the neutral SMPL.
SYNTH_REST_JOINTS = np.array([
    [0.00, -0.22, 0.02], [0.06, -0.31, 0.01], [-0.06, -0.31, 0.01], [0.00, -0.11, -0.01],
    [0.10, -0.69, 0.01], [-0.10, -0.69, 0.01], [0.00, 0.03, 0.01], [0.09, -1.09, -0.03],
    [-0.09, -1.09, -0.03], [0.00, 0.08, 0.03], [0.12, -1.15, 0.09], [-0.12, -1.15, 0.09],
    [0.00, 0.29, 0.00], [0.08, 0.20, 0.00], [-0.08, 0.20, 0.00], [0.00, 0.35, 0.05],
    [0.17, 0.23, -0.01], [-0.17, 0.23, -0.01], [0.43, 0.21, -0.03], [-0.43, 0.21, -0.03],
    [0.68, 0.22, -0.03], [-0.68, 0.22, -0.03], [0.77, 0.21, -0.04], [-0.77, 0.21, -0.04],
], dtype=np.float64)

# Leaf segments (joint, end offset) so that head top, toes and finger tips have vertices.
_LEAVES = ((15, (0.0, 0.22, 0.0)), (10, (0.0, -0.03, 0.12)), (11, (0.0, -0.03, 0.12)),
           (22, (0.09, 0.0, 0.0)), (23, (-0.09, 0.0, 0.0)))


def _radius(joint: int) -> float:
    if joint in (0, 3, 6, 9):
        return 0.12  # torso
    if joint in (12, 15):
        return 0.08  # neck / head
    if joint in (1, 2, 4, 5):
        return 0.07  # thighs
    return 0.045


def _segments() -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(driving joint, end joint or -1, start point, end point) for every tube."""
    segs = []
    for child, parent in SMPL24.bones():
        segs.append((parent, child, SYNTH_REST_JOINTS[parent], SYNTH_REST_JOINTS[child]))
    for joint, off in _LEAVES:
        start = SYNTH_REST_JOINTS[joint]
        segs.append((joint, -1, start, start + np.asarray(off)))
    return segs


def _perp_basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = d / np.linalg.norm(d)
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(d, u)


def _nearest_regressor(verts: np.ndarray, targets: np.ndarray, k: int = 16) -> np.ndarray:
    """Rows of convex weights over the k vertices nearest to each target (inverse distance)."""
    reg = np.zeros((len(targets), len(verts)), dtype=np.float64)
    for i, t in enumerate(targets):
        d = np.linalg.norm(verts - t, axis=1)
        idx = np.argsort(d, kind="stable")[:k]
        w = 1.0 / (d[idx] + 0.01)
        reg[i, idx] = w / w.sum()
    return reg


def _build_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    segs = _segments()
    counts = np.full(len(segs), NUM_VERTS // len(segs))
    counts[: NUM_VERTS - counts.sum()] += 1
    verts, weights, radial, seg_id, faces = [], [], [], [], []
    base = 0
    for s, ((drive, end, a, b), n) in enumerate(zip(segs, counts)):
        u, w = _perp_basis(b - a)
        rings = n // _RING
        ts = np.concatenate([np.repeat(np.linspace(0.0, 1.0, rings), _RING),
                             np.ones(n - rings * _RING)])
        phis = np.concatenate([np.tile(np.arange(_RING) * 2 * np.pi / _RING, rings),
                               rng.uniform(0, 2 * np.pi, n - rings * _RING)])
        r = _radius(drive) * np.where(np.arange(n) < rings * _RING, 1.0, 0.5)
        out = np.cos(phis)[:, None] * u + np.sin(phis)[:, None] * w
        verts.append(a + ts[:, None] * (b - a) + r[:, None] * out)
        radial.append(out)
        wt = np.zeros((n, 24))
        if end >= 0:  # blend towards the child joint near the far end of the bone
            wt[:, drive] = 1.0 - 0.5 * ts
            wt[:, end] = 0.5 * ts
        else:
            wt[:, drive] = 1.0
        weights.append(wt)
        seg_id.append(np.full(n, s))
        for i in range(rings - 1):
            for k in range(_RING):
                p, q = base + i * _RING + k, base + i * _RING + (k + 1) % _RING
                faces += [(p, q, q + _RING), (p, q + _RING, p + _RING)]
        base += n
    v = np.concatenate(verts)
    faces_arr = np.asarray(faces, dtype=np.int64)
    faces_arr = np.resize(faces_arr, (NUM_FACES, 3))  # tile to the official face count

    seg_id = np.concatenate(seg_id)
    radial = np.concatenate(radial)
    pelvis = SYNTH_REST_JOINTS[0]
    shapedirs = np.zeros((NUM_VERTS, 3, 10))
    shapedirs[:, :, 0] = 0.05 * (v - pelvis)          # overall size
    shapedirs[:, :, 1] = 0.02 * radial                 # girth
    seg_dirs = rng.normal(size=(len(segs), 3, 8)) * 0.01
    shapedirs[:, :, 2:] = seg_dirs[seg_id]             # smooth per-segment offsets
    posedirs = rng.normal(size=(NUM_VERTS, 3, 207)) * 1e-3

    j_reg = _nearest_regressor(v, SYNTH_REST_JOINTS)
    kintree = np.stack([np.array(SMPL24.parents, dtype=np.int64),
                        np.arange(24, dtype=np.int64)])
    kintree[0, 0] = 4294967295  # the official files store the root's parent as uint32 -1
    return {
        "v_template": v, "shapedirs": shapedirs, "posedirs": posedirs,
        "J_regressor": j_reg, "weights": np.concatenate(weights), "kintree_table": kintree,
        "f": faces_arr,
    }


def _extra_targets(j: np.ndarray) -> np.ndarray:
    """J_regressor_extra rows: R hip, L hip, LSP neck, LSP head top, MPII pelvis,
    MPII thorax, H36M spine, H36M jaw, H36M head."""
    up = np.array([0.0, 1.0, 0.0])
    return np.stack([j[2] + 0.03 * up, j[1] + 0.03 * up, j[12], j[15] + 0.2 * up, j[0],
                     0.5 * (j[13] + j[14]), j[6], 0.5 * (j[12] + j[15]), j[15] + 0.08 * up])


def _h36m_targets(j: np.ndarray) -> np.ndarray:
    """J_regressor_h36m rows in SPIN's convention, where ``H36M_TO_J14`` yields LSP order:
    0 pelvis, 1-3 left leg, 4-6 right leg, 7 spine, 8 thorax, 9 nose, 10 head,
    11-13 left arm, 14-16 right arm (left = SMPL's +x side)."""
    up = np.array([0.0, 1.0, 0.0])
    return np.stack([j[0], j[1], j[4], j[7], j[2], j[5], j[8], j[6], 0.5 * (j[13] + j[14]),
                     j[15] + np.array([0.0, 0.0, 0.08]), j[15] + 0.08 * up,
                     j[16], j[18], j[20], j[17], j[19], j[21]])


def make_synthetic_smpl(directory: str | Path, *, seed: int = 0, fmt: str = "pkl") -> Path:
    """Write a synthetic neutral SMPL model and TCMR's auxiliary files into ``directory``.

    ``fmt`` is ``'pkl'`` (``SMPL_NEUTRAL.pkl``, plain pickle, CSC ``J_regressor``) or
    ``'npz'`` (``SMPL_NEUTRAL.npz``, dense). Returns the directory. Deterministic in ``seed``.
    """
    if fmt not in ("pkl", "npz"):
        raise ValueError(f"fmt must be 'pkl' or 'npz', got {fmt!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    arrays = _build_arrays(seed)
    if fmt == "pkl":
        data = dict(arrays, J_regressor=sp.csc_matrix(arrays["J_regressor"]),
                    bs_style="lbs", bs_type="lrotmin")
        with open(out / "SMPL_NEUTRAL.pkl", "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    else:
        np.savez(out / "SMPL_NEUTRAL.npz", **arrays)
    rest = arrays["J_regressor"] @ arrays["v_template"]
    np.save(out / "J_regressor_extra.npy", _nearest_regressor(arrays["v_template"],
                                                              _extra_targets(rest)))
    np.save(out / "J_regressor_h36m.npy", _nearest_regressor(arrays["v_template"],
                                                             _h36m_targets(rest)))
    pose6d = np.tile(np.array([1, 0, 0, 1, 0, 0], dtype=np.float32), 24)
    np.savez(out / "smpl_mean_params.npz", pose=pose6d, shape=np.zeros(10),
             cam=np.array([0.9, 0.0, 0.0], dtype=np.float32))
    return out
