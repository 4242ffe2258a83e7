"""poselift.extract: the GPU stage — video -> person crops -> 2D estimators and feature
backbones -> HDF5 caches.

Public entry points used by other tools and by the held-out reference checks:
``load_alphapose`` / ``sikr_decode`` (AlphaPose FastPose with SIKR), ``pose_nms``
(parametric pose NMS), ``deform_conv2d`` (torchvision-compatible modulated deformable
convolution in plain PyTorch), ``load_yolox`` / ``yolox_preprocess`` / ``yolox_postprocess`` /
``detect_people`` (YOLOX person detector without torchvision), ``track_people`` /
``TrackerParams`` / ``plot_tracks`` (IoU + OKS + appearance multi-person tracker).
"""
from .deform_conv import DeformConv2d, deform_conv2d
from .detectors import YOLOX, FrameBoxes, detect_people, load_yolox, yolox_postprocess, yolox_preprocess
from .estimators.fastpose import FastPose, load_alphapose
from .estimators.pose_nms import PoseNMSParams, pose_nms
from .estimators.sikr import flip_test_logits, sikr_decode
from .tracking import TrackerParams, TrackingResult, plot_tracks, track_people

__all__ = ["deform_conv2d", "DeformConv2d", "FastPose", "load_alphapose", "sikr_decode",
           "flip_test_logits", "pose_nms", "PoseNMSParams", "YOLOX", "load_yolox", "yolox_preprocess",
           "yolox_postprocess", "detect_people", "FrameBoxes", "track_people", "TrackerParams",
           "TrackingResult", "plot_tracks"]
