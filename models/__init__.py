"""Backbones, the multi-level MFO model and the downstream classifier."""
from models.backbones import BACKBONES, LEVELS, build_backbone, min_seq, temporal_steps
from models.classifier import VideoClassifier
from models.mfo import MOTION_STEPS, MFOModel
from models.temporal import MotionExcitation, pool_time, stack_reversed

__all__ = [
    "BACKBONES",
    "LEVELS",
    "MFOModel",
    "MOTION_STEPS",
    "MotionExcitation",
    "VideoClassifier",
    "build_backbone",
    "min_seq",
    "pool_time",
    "stack_reversed",
    "temporal_steps",
]
