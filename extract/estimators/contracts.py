"""Preprocessing contracts of the 2D keypoint estimators, as :class:`PreprocessContract` presets.

There is one contract class for the whole extraction stage (``poselift.extract.contracts``);
this module only holds the estimator presets:

* FastPose (AlphaPose SIKR): detector box expanded to w/h = 0.75 and x1.25
  (``_box_to_center_scale``), 256x192 (h x w), RGB / 255 minus (0.406, 0.457, 0.480),
  **no std division**, stride 4, decode = SIKR integral through the crop box.
* FAMI-Pose (HRNet-W48): the same box rule, 384x288, RGB / 255 with ImageNet mean/std,
  supporting frames (-2, -1, 1, 2) cropped with the key frame's box, decode = argmax plus a
  quarter cell toward the higher neighbour (HRNet ``get_final_preds``).
"""
from __future__ import annotations

from typing import Any

from ..contracts import IMAGENET_MEAN, IMAGENET_STD, PreprocessContract, simcc_contract

__all__ = ["fastpose_contract", "famipose_contract", "FastPoseContract", "FASTPOSE_CONTRACT",
           "FAMIPOSE_CONTRACT", "ESTIMATOR_CONTRACTS"]

SIKR_DECODE = "sikr_integral; cell-centre indices (no +0.5); isotropic crop_w/W_hm about crop-box centre"
FAMI_DECODE = ("argmax + 0.25 cell toward the higher neighbour (only 1 < idx < size-1, HRNet); "
               "cell-centre indices (no +0.5); isotropic crop_w/W_hm about crop-box centre")


def fastpose_contract(**overrides: Any) -> PreprocessContract:
    """AlphaPose FastPose crop contract (keyword overrides, e.g. ``joint_set='halpe26'``)."""
    base = dict(input_size=(256, 192), box_mode="aspect", bbox_scale=1.25,
                mean=(0.406, 0.457, 0.480), std=None, value_scale=255.0, channel_order="RGB",
                heatmap_stride=4, joint_set="coco17", decode=SIKR_DECODE)
    return PreprocessContract(**{**base, **overrides})


def famipose_contract(**overrides: Any) -> PreprocessContract:
    """FAMI-Pose (HRNet) crop contract with supporting frames (-2, -1, 1, 2)."""
    base = dict(input_size=(384, 288), box_mode="aspect", bbox_scale=1.25, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, value_scale=255.0, channel_order="RGB", heatmap_stride=4,
                supporting_frames=(-2, -1, 1, 2), joint_set="posetrack17", decode=FAMI_DECODE)
    return PreprocessContract(**{**base, **overrides})


# Former name of the FastPose preset (it used to be its own class with value_scale as a
# 1/255 multiplier; now it is the shared class with value_scale = 255 as a divisor).
FastPoseContract = fastpose_contract

FASTPOSE_CONTRACT = fastpose_contract()
FAMIPOSE_CONTRACT = famipose_contract()
ESTIMATOR_CONTRACTS: dict[str, PreprocessContract] = {
    "sikr": FASTPOSE_CONTRACT,
    "famipose": FAMIPOSE_CONTRACT,
    "simcc": simcc_contract(),
}
