"""Joint sets: names, parents (kinematic tree), left/right pairs and conversions.

Every joint layout poselift reads or writes is declared here once. A layout is
identified by its ``name`` (stored in cache attributes as ``joint_set``).
Conversions are linear maps (J_dst x J_src matrices) so that "mean of the two
hips" style definitions and plain re-indexing share one code path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "JointSet", "JOINT_SETS", "get_joint_set", "conversion_matrix", "convert",
    "flip_permutation", "H36M17", "HUMANEVA15", "COCO17", "MPII16", "HALPE26", "SMPL24",
    "H36M32_TO_17", "COCO17_SIGMAS",
]


@dataclass(frozen=True)
class JointSet:
    """A named joint layout.

    ``parents[j]`` is the parent joint of ``j`` (-1 for the root); ``left`` and
    ``right`` are index lists of mirrored joints in matching order.
    """

    name: str
    names: tuple[str, ...]
    parents: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    root: int = 0
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.parents) != n:
            raise ValueError(f"joint set {self.name}: {len(self.parents)} parents for {n} names")
        if len(self.left) != len(self.right):
            raise ValueError(f"joint set {self.name}: left/right lists differ in length")
        if set(self.left) & set(self.right):
            raise ValueError(f"joint set {self.name}: a joint is both left and right")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def bones(self) -> list[tuple[int, int]]:
        """(child, parent) pairs for every non-root joint."""
        return [(j, p) for j, p in enumerate(self.parents) if p >= 0]

    def flip_permutation(self) -> np.ndarray:
        """Index array ``perm`` such that ``x[..., perm, :]`` swaps left and right joints."""
        perm = np.arange(self.num_joints)
        perm[list(self.left)] = self.right
        perm[list(self.right)] = self.left
        return perm


H36M17 = JointSet(
    name="h36m17",
    names=("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine",
           "thorax", "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder",
           "r_elbow", "r_wrist"),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    left=(4, 5, 6, 11, 12, 13),
    right=(1, 2, 3, 14, 15, 16),
    aliases=("h36m",),
)

# Human3.6M's 32 raw mocap joints -> the 17 VideoPose3D keeps (static joints dropped).
H36M32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)

HUMANEVA15 = JointSet(
    name="humaneva15",
    names=("pelvis", "thorax", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow",
           "r_wrist", "l_hip", "l_knee", "l_ankle", "r_hip", "r_knee", "r_ankle", "head"),
    parents=(-1, 0, 1, 2, 3, 1, 5, 6, 0, 8, 9, 0, 11, 12, 1),
    left=(2, 3, 4, 8, 9, 10),
    right=(5, 6, 7, 11, 12, 13),
)

COCO17 = JointSet(
    name="coco17",
    names=("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
           "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle",
           "r_ankle"),
    # COCO has no kinematic tree; this one (nose as root) is used for drawing and bone lengths.
    parents=(-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    left=(1, 3, 5, 7, 9, 11, 13, 15),
    right=(2, 4, 6, 8, 10, 12, 14, 16),
    aliases=("coco",),
)

# Per-keypoint OKS falloff of the COCO keypoint evaluation (cocoapi ``COCOeval.kpt_oks_sigmas``),
# in COCO17 order; OKS uses k = 2 * sigma and the object's area as the squared scale.
COCO17_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62,
                          1.07, 1.07, 0.87, 0.87, 0.89, 0.89]) / 10.0

MPII16 = JointSet(
    name="mpii16",
    names=("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
           "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
           "l_elbow", "l_wrist"),
    parents=(1, 2, 6, 6, 3, 4, -1, 6, 7, 8, 11, 12, 7, 7, 13, 14),
    left=(3, 4, 5, 13, 14, 15),
    right=(2, 1, 0, 12, 11, 10),
    root=6,
    aliases=("mpii",),
)

HALPE26 = JointSet(
    name="halpe26",
    names=COCO17.names + ("head", "neck", "hip", "l_big_toe", "r_big_toe", "l_small_toe",
                          "r_small_toe", "l_heel", "r_heel"),
    parents=(18,) + COCO17.parents[1:5] + (18, 18) + COCO17.parents[7:11] + (19, 19)
    + COCO17.parents[13:] + (18, 19, -1, 15, 16, 15, 16, 15, 16),
    left=COCO17.left + (20, 22, 24),
    right=COCO17.right + (21, 23, 25),
    root=19,
)

SMPL24 = JointSet(
    name="smpl24",
    names=("pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle",
           "r_ankle", "spine3", "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head",
           "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist", "l_hand",
           "r_hand"),
    parents=(-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21),
    left=(1, 4, 7, 10, 13, 16, 18, 20, 22),
    right=(2, 5, 8, 11, 14, 17, 19, 21, 23),
)

JOINT_SETS: dict[str, JointSet] = {}
for _js in (H36M17, HUMANEVA15, COCO17, MPII16, HALPE26, SMPL24):
    JOINT_SETS[_js.name] = _js
    for _alias in _js.aliases:
        JOINT_SETS[_alias] = _js


def get_joint_set(name: str) -> JointSet:
    """Look a joint set up by name or alias; the error lists the known names."""
    try:
        return JOINT_SETS[name]
    except KeyError:
        raise KeyError(f"unknown joint set {name!r}; known: {sorted(JOINT_SETS)}") from None


def flip_permutation(name: str) -> np.ndarray:
    return get_joint_set(name).flip_permutation()


def _avg(src: JointSet, *names: str) -> dict[int, float]:
    return {src.index(n): 1.0 / len(names) for n in names}


def _to_h36m(src: JointSet, pelvis, thorax, head, neck_nose) -> np.ndarray:
    """Rows of an H36M-17 conversion built from a source layout with named limbs."""
    m = np.zeros((17, src.num_joints))
    rows = {
        0: pelvis,
        1: _avg(src, "r_hip"), 2: _avg(src, "r_knee"), 3: _avg(src, "r_ankle"),
        4: _avg(src, "l_hip"), 5: _avg(src, "l_knee"), 6: _avg(src, "l_ankle"),
        8: thorax, 9: neck_nose, 10: head,
        11: _avg(src, "l_shoulder"), 12: _avg(src, "l_elbow"), 13: _avg(src, "l_wrist"),
        14: _avg(src, "r_shoulder"), 15: _avg(src, "r_elbow"), 16: _avg(src, "r_wrist"),
    }
    for r, weights in rows.items():
        for c, w in weights.items():
            m[r, c] += w
    m[7] = 0.5 * (m[0] + m[8])  # spine: midway between pelvis and thorax
    return m


def conversion_matrix(src: str, dst: str) -> np.ndarray:
    """(J_dst, J_src) matrix ``M`` with ``x_dst = M @ x_src`` (per coordinate)."""
    s, d = get_joint_set(src), get_joint_set(dst)
    if s.name == d.name:
        return np.eye(s.num_joints)
    if d.name == "h36m17" and s.name == "coco17":
        return _to_h36m(s, pelvis=_avg(s, "l_hip", "r_hip"), thorax=_avg(s, "l_shoulder", "r_shoulder"),
                        head=_avg(s, "l_eye", "r_eye"), neck_nose=_avg(s, "nose"))
    if d.name == "h36m17" and s.name == "halpe26":
        # The common Halpe-26 -> H36M-17 map (pelvis = Halpe "hip", thorax = "neck").
        return _to_h36m(s, pelvis=_avg(s, "hip"), thorax=_avg(s, "neck"), head=_avg(s, "head"),
                        neck_nose=_avg(s, "nose"))
    if d.name == "coco17" and s.name == "halpe26":
        return np.eye(26)[:17]
    if s.name == "halpe136" and d.name in ("halpe26", "coco17", "h36m17"):
        # Halpe-136's first 26 points are Halpe-26 (body + feet); face and hands are dropped.
        body = np.eye(136)[:26]
        return body if d.name == "halpe26" else conversion_matrix("halpe26", d.name) @ body
    raise KeyError(f"no conversion from joint set {s.name!r} to {d.name!r}")


def convert(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert ``x`` of shape (..., J_src, C) to (..., J_dst, C)."""
    m = conversion_matrix(src, dst)
    if x.shape[-2] != m.shape[1]:
        raise ValueError(f"convert {src}->{dst}: expected {m.shape[1]} joints, got shape {x.shape}")
    return np.einsum("dj,...jc->...dc", m, x).astype(x.dtype, copy=False)


# SPIN's 49-joint output of SMPL regressors (SPIN, VIBE, TCMR): 25 OpenPose BODY_25 joints,
# then 24 "ground-truth" joints whose first 14 (25..38) are the LSP-14 layout.
SPIN49 = JointSet(
    name="spin49",
    names=("op_nose", "op_neck", "op_r_shoulder", "op_r_elbow", "op_r_wrist", "op_l_shoulder",
           "op_l_elbow", "op_l_wrist", "op_mid_hip", "op_r_hip", "op_r_knee", "op_r_ankle",
           "op_l_hip", "op_l_knee", "op_l_ankle", "op_r_eye", "op_l_eye", "op_r_ear",
           "op_l_ear", "op_l_big_toe", "op_l_small_toe", "op_l_heel", "op_r_big_toe",
           "op_r_small_toe", "op_r_heel",
           "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
           "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck_lsp", "head_top_lsp",
           "pelvis_mpii", "thorax_mpii", "spine_h36m", "jaw_h36m", "head_h36m", "nose",
           "l_eye", "r_eye", "l_ear", "r_ear"),
    parents=(1, 8, 1, 2, 3, 1, 5, 6, -1, 8, 9, 10, 8, 12, 13, 0, 0, 15, 16, 14, 14, 14, 11, 11,
             11,
             26, 27, 39, 39, 28, 29, 32, 33, 40, 40, 34, 35, 40, 37, 8, 41, 39, 37, 37, 43, 44,
             44, 45, 46),
    left=(5, 6, 7, 12, 13, 14, 16, 18, 19, 20, 21, 28, 29, 30, 34, 35, 36, 45, 47),
    right=(2, 3, 4, 9, 10, 11, 15, 17, 22, 23, 24, 27, 26, 25, 33, 32, 31, 46, 48),
    root=8,
)

# LSP-14 ("common" in VIBE/TCMR): the 3DPW/H36M evaluation joints of TCMR.
LSP14 = JointSet(
    name="lsp14",
    names=("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
           "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top"),
    parents=(1, 2, -1, 2, 3, 4, 7, 8, 12, 12, 9, 10, 2, 12),
    left=(3, 4, 5, 9, 10, 11),
    right=(2, 1, 0, 8, 7, 6),
    root=2,
)

for _js in (SPIN49, LSP14):
    JOINT_SETS[_js.name] = _js
__all__ += ["SPIN49", "LSP14"]


# InstaVariety 2D keypoints as stored by VIBE/TCMR (``insta_train_db.h5``): OpenPose BODY_25
# joints in another order plus the LSP head top. Names reuse SPIN49's so conversion is by name.
INSTA25 = JointSet(
    name="insta25",
    names=("op_r_heel", "op_r_knee", "op_r_hip", "op_l_hip", "op_l_knee", "op_l_heel",
           "op_r_wrist", "op_r_elbow", "op_r_shoulder", "op_l_shoulder", "op_l_elbow",
           "op_l_wrist", "op_neck", "head_top_lsp", "op_nose", "op_l_eye", "op_r_eye",
           "op_l_ear", "op_r_ear", "op_l_big_toe", "op_r_big_toe", "op_l_small_toe",
           "op_r_small_toe", "op_l_ankle", "op_r_ankle"),
    parents=(24, 2, 12, 12, 3, 23, 7, 8, 12, 12, 9, 10, -1, 12, 12, 14, 14, 15, 16, 23, 24,
             23, 24, 4, 1),
    left=(3, 4, 5, 9, 10, 11, 15, 17, 19, 21, 23),
    right=(2, 1, 0, 8, 7, 6, 16, 18, 20, 22, 24),
    root=12,
)

# OpenPose COCO-18 (3DPW's ``poses2d`` in the sequence files).
OPENPOSE18 = JointSet(
    name="openpose18",
    names=("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow",
           "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye",
           "l_eye", "r_ear", "l_ear"),
    parents=(1, -1, 1, 2, 3, 1, 5, 6, 1, 8, 9, 1, 11, 12, 0, 0, 14, 15),
    left=(5, 6, 7, 11, 12, 13, 15, 17),
    right=(2, 3, 4, 8, 9, 10, 14, 16),
    root=1,
)

for _js in (INSTA25, OPENPOSE18):
    JOINT_SETS[_js.name] = _js
__all__ += ["INSTA25", "OPENPOSE18"]


# PoseTrack 2017/2018 (FAMI-Pose / DCPose output order): COCO-like, but joints 1 and 2 are the
# head bottom (neck) and head top instead of the eyes; ears are not annotated.
POSETRACK17 = JointSet(
    name="posetrack17",
    names=("nose", "head_bottom", "head_top", "l_ear", "r_ear", "l_shoulder", "r_shoulder",
           "l_elbow", "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee",
           "l_ankle", "r_ankle"),
    parents=(1, -1, 0, 1, 1, 1, 1, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    left=(3, 5, 7, 9, 11, 13, 15),
    right=(4, 6, 8, 10, 12, 14, 16),
    root=1,
)


def _halpe136() -> JointSet:
    """Halpe full body: 0-25 Halpe-26, 26-93 68 face points, 94-114 left / 115-135 right hand."""
    face = tuple(f"face_{i}" for i in range(68))
    hands = tuple(f"{s}_hand_{i}" for s in ("l", "r") for i in range(21))
    # Hand tree: point 0 is the hand root (at the wrist), fingers are chains of 4 from it.
    def hand(base: int, wrist: int) -> tuple[int, ...]:
        return tuple(wrist if i == 0 else base if i % 4 == 1 else base + i - 1 for i in range(21))
    parents = HALPE26.parents + (17,) * 68 + hand(94, 9) + hand(115, 10)
    # AlphaPose's halpe_136 flip pairs (left member first where a side is defined).
    pairs = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (20, 21),
             (22, 23), (24, 25), (26, 42), (27, 41), (28, 40), (29, 39), (30, 38), (31, 37),
             (32, 36), (33, 35), (43, 52), (44, 51), (45, 50), (46, 49), (47, 48), (62, 71),
             (63, 70), (64, 69), (65, 68), (66, 73), (67, 72), (57, 61), (58, 60), (74, 80),
             (75, 79), (76, 78), (87, 89), (93, 91), (86, 90), (85, 81), (84, 82))
    pairs += tuple((94 + i, 115 + i) for i in range(21))
    return JointSet(name="halpe136", names=HALPE26.names + face + hands, parents=parents,
                    left=tuple(a for a, _ in pairs), right=tuple(b for _, b in pairs), root=19)


HALPE136 = _halpe136()

for _js in (POSETRACK17, HALPE136):
    JOINT_SETS[_js.name] = _js
__all__ += ["POSETRACK17", "HALPE136"]
