"""Backbones, the multi-level MFO model and the downstream classifier."""
from models.backbones import BACKBONES, LEVELS, build_backbone
from models.classifier import VideoClassifier
from models.mfo import MFOModel
from models.temporal import MotionExcitation, pool_time, stack_reversed

__all__ = [
    "BACKBONES",
    "LEVELS",
    "MFOModel",
    "MotionExcitation",
    "VideoClassifier",
    "build_backbone",
    "pool_time",
    "stack_reversed",
]
