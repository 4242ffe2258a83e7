"""Training and data for the 2D keypoint estimators (SIKR/FastPose, SimCC, FAMI-Pose): datasets
from COCO / Halpe / PoseTrack annotation files, AlphaPose augmentation and PGPG, training steps,
the training loop (``poselift-extract train``) and multi-domain distillation."""
