"""Downstream classifier: backbone -> pooled ``high`` -> head.

Used by the linear probe and fine-tuning (as in CoCLR), retrieval (``features``) and the temporal
CAM (``feature_map``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import build_backbone

HEADS = ("linear", "bn_linear")


class L2Normalize(nn.Module):
    """L2 normalisation over the feature axis of ``[N, C]``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)


class VideoClassifier(nn.Module):
    """Backbone, global average pool of its ``high`` map, and a classification head.

    Args:
        arch: one of ``models.BACKBONES``.
        num_classes: number of classes (101 for UCF-101, 51 for HMDB-51).
        head: ``'linear'`` = Dropout -> Linear (fine-tuning); ``'bn_linear'`` = L2-normalise ->
            BatchNorm1d -> Linear (the CoCLR linear probe).
        dropout: dropout probability before the linear layer (``head='linear'`` only).
    """

    def __init__(self, arch: str = "r3d18", num_classes: int = 101, head: str = "linear",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}: choose one of {', '.join(HEADS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if head == "bn_linear" and dropout > 0:
            raise ValueError("dropout applies to head='linear' only; use dropout=0 with head='bn_linear'")
        self.backbone = build_backbone(arch)
        width = self.backbone.channels[2]
        fc = nn.Linear(width, num_classes)
        nn.init.normal_(fc.weight, 0.0, 0.01)
        nn.init.zeros_(fc.bias)
        if head == "linear":
            self.head = nn.Sequential(nn.Dropout(dropout), fc)
        else:
            self.head = nn.Sequential(L2Normalize(), nn.BatchNorm1d(width), fc)

    def feature_map(self, x: Tensor) -> Tensor:
        """``high`` feature map of clips ``x [N,3,T,H,W]``: ``[N, C_high, t, h, w]``."""
        return self.backbone(x)[2]

    def features(self, x: Tensor) -> Tensor:
        """Globally average-pooled ``high`` features of clips ``x [N,3,T,H,W]``: ``[N, C_high]``."""
        return self.feature_map(x).mean(dim=(2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[N, num_classes]`` of clips ``x [N,3,T,H,W]``."""
        return self.head(self.features(x))
