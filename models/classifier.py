"""Downstream classifier (backbone -> pooled ``high`` -> head) and loading pretrained backbones.

Used by the linear probe and fine-tuning (as in CoCLR), retrieval (``features``) and the temporal
CAM (``feature_map``).
"""
from __future__ import annotations

import os
from collections import Counter

import torch.nn.functional as F
from torch import Tensor, nn

from engine.checkpoint import CheckpointError, load_checkpoint
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


def load_backbone(backbone: nn.Module, checkpoint_path: str | os.PathLike) -> dict:
    """Load pretrained backbone weights into ``backbone`` strictly and report what was used.

    Accepts a ``train.py`` checkpoint (the model under ``'model'``, backbone keys ``backbone.*``),
    any bare state dict with ``backbone.*`` keys (e.g. a saved ``VideoClassifier``), or the state
    dict of a bare backbone; a leading DDP ``module.`` is stripped. Every other key (the MFO heads,
    a classifier head) is ignored and reported. Raises ``CheckpointError`` naming the missing and
    unexpected keys if the backbone does not load completely.

    Returns ``{'path', 'loaded': [keys], 'ignored': [keys], 'summary': str}``.
    """
    ckpt = load_checkpoint(checkpoint_path)
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        loaded = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        ignored = sorted(k for k in state if not k.startswith("backbone."))
    else:
        loaded, ignored = state, []

    expected = set(backbone.state_dict())
    missing = sorted(expected - set(loaded))
    unexpected = sorted(set(loaded) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint_path}: the backbone does not load fully: {len(missing)} missing key(s) "
            f"{_preview(missing)}, {len(unexpected)} unexpected key(s) {_preview(unexpected)}. "
            "Is --arch the backbone the checkpoint was trained with?"
        )
    try:
        backbone.load_state_dict(loaded, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{checkpoint_path}: cannot load the backbone: {e}") from e

    groups = Counter(k.split(".")[0] for k in ignored)
    summary = f"loaded {len(loaded)} backbone tensors from {checkpoint_path}"
    if ignored:
        summary += "; ignored " + ", ".join(f"{name} ({n})" for name, n in sorted(groups.items()))
    return {"path": str(checkpoint_path), "loaded": sorted(loaded), "ignored": ignored, "summary": summary}


def _preview(keys: list[str], n: int = 8) -> str:
    """The first ``n`` keys, then how many more."""
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + more + "]"
