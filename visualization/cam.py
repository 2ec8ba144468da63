"""Temporal class activation maps (docs/method.md §6): the arrow-of-time head, its CAM and the pictures.

A bias-free linear head ``W [2, C]`` reads the globally pooled ``high`` map of a frozen backbone and
tells a clip (label 0) from its time-reversed copy (label 1). Because the head is linear and pooling
is a mean, the logit of class ``c`` is the mean over positions of ``W[c] . high[:, :, t, h, w]``:
that per-position score, upsampled to the clip and min-max normalised, is the CAM drawn over the frames.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from datasets import denormalize
from engine.files import atomic_write
from models import build_backbone

FORWARD, REVERSED = 0, 1  # class indices of the order head
CLASS_NAMES = ("forward", "reversed")


def order_head(channels: int) -> nn.Linear:
    """The bias-free linear head ``channels -> 2`` (forward / reversed) on the pooled high map."""
    return nn.Linear(channels, 2, bias=False)


def with_reversed(clips: Tensor) -> tuple[Tensor, Tensor]:
    """Stack ``clips [N,3,T,H,W]`` with their time-reversed copies: ``[2N,3,T,H,W]`` and labels ``[2N]``.

    The first ``N`` clips are the originals (label 0), the last ``N`` the same clips reversed (label 1).
    """
    n = clips.shape[0]
    both = torch.cat([clips, clips.flip(2)], dim=0)  # [2N,3,T,H,W]
    labels = torch.cat([torch.full((n,), FORWARD), torch.full((n,), REVERSED)]).to(clips.device)  # [2N]
    return both, labels


def pooled_logits(head: nn.Linear, high: Tensor) -> Tensor:
    """Order logits ``[N,2]`` of a high map ``[N,C,t,h,w]``: the head on the global average pool."""
    return head(high.mean(dim=(2, 3, 4)))  # [N,C] -> [N,2]


class OrderClassifier(nn.Module):
    """A backbone and the order head on its pooled ``high`` map: clips ``[N,3,T,H,W]`` -> logits ``[N,2]``."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, clips: Tensor) -> Tensor:
        return pooled_logits(self.head, self.backbone(clips)[2])


def high_map_size(arch: str, seq: int, img_dim: int) -> tuple[int, int, int]:
    """(t, h, w) of the ``high`` map of ``arch`` for clips of ``seq`` frames of ``img_dim`` pixels,
    inferred on the meta device (no weights are made, nothing is computed)."""
    with torch.device("meta"):
        backbone = build_backbone(arch).eval()
        return tuple(backbone(torch.empty(1, 3, seq, img_dim, img_dim))[2].shape[2:])


def constant_cam_warning(arch: str, seq: int, img_dim: int) -> str | None:
    """A warning when the ``high`` map is a single position a frame (its CAM is one flat colour), naming
    the smallest ``img_dim`` at which it varies over the frame; None when it already does."""
    t, h, w = high_map_size(arch, seq, img_dim)
    if h * w > 1:
        return None
    low, high = img_dim, 2 * img_dim  # the answer lies in (low, high]
    while min(high_map_size(arch, seq, high)[1:]) < 2:
        low, high = high, 2 * high
    while high - low > 1:  # bisection: the map only grows with the input
        mid = (low + high) // 2
        low, high = (low, mid) if min(high_map_size(arch, seq, mid)[1:]) >= 2 else (mid, high)
    where = "each frame and the whole clip: every overlay is one flat colour" if t == 1 else \
        "each frame: every overlay is one flat colour (varying only from frame to frame)"
    return (f"warning: at --img_dim {img_dim} the {arch} high map is {t}x{h}x{w} (t x h x w), so the CAM is "
            f"constant over {where}; it varies over the frame from --img_dim {high}")


def activation_map(weight: Tensor, high: Tensor) -> Tensor:
    """Per-position class scores ``[N,K,t,h,w]``: ``weight [K,C]`` applied at every (t,h,w) of ``high``.

    Their mean over (t,h,w) is the pooled logit of the same head.
    """
    return torch.einsum("kc,ncthw->nkthw", weight, high)


def clip_cam(weight: Tensor, high: Tensor, labels: Tensor, size: tuple[int, int, int]) -> Tensor:
    """The CAM of each clip's class ``labels [N]``, upsampled to ``size = (T,H,W)``, in [0, 1] per clip.

    Upsampling is trilinear (``align_corners=False``); each clip is then min-max normalised over all its
    frames, so the frames of one clip share one colour scale. A constant map gives zeros. Returns ``[N,T,H,W]``.
    """
    cam = activation_map(weight, high)  # [N,K,t,h,w]
    cam = cam[torch.arange(cam.shape[0], device=cam.device), labels]  # [N,t,h,w]
    cam = F.interpolate(cam.unsqueeze(1), size=size, mode="trilinear", align_corners=False).squeeze(1)  # [N,T,H,W]
    flat = cam.flatten(1)  # [N,T*H*W]
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    return (cam - low) / span


def to_rgb(clip: Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of ``clip [3,T,H,W]``: uint8 frames ``[T,H,W,3]``."""
    rgb = denormalize(clip.detach().float())  # [3,T,H,W] in [0, 1]
    return (rgb.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).cpu().numpy()


def overlay(frame: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a uint8 frame ``[H,W,3]`` 50/50 with the JET colour of ``heat [H,W]`` in [0, 1]: uint8 ``[H,W,3]``."""
    jet = matplotlib.colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0  # [H,W,3] float
    return np.round(0.5 * frame.astype(np.float64) + 0.5 * jet).clip(0, 255).astype(np.uint8)


def grid(frames: np.ndarray, overlays: np.ndarray) -> np.ndarray:
    """All frames of a clip in a row over their overlays: ``[T,H,W,3]`` twice -> uint8 ``[2H, T*W, 3]``."""
    top = np.concatenate(list(frames), axis=1)  # [H,T*W,3]
    bottom = np.concatenate(list(overlays), axis=1)  # [H,T*W,3]
    return np.concatenate([top, bottom], axis=0)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 ``[H,W,3]`` image as PNG atomically (temporary file in the same folder, then rename)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_png expects a uint8 [H,W,3] image, got {image.dtype} {list(image.shape)}")
    path = Path(path)
    with atomic_write(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
    return path


def write_clip_images(frames: np.ndarray, cam: np.ndarray, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``frame_00001.png`` ... (one overlay per frame) and ``grid.png`` for one clip.

    ``frames [T,H,W,3]`` uint8, ``cam [T,H,W]`` in [0, 1]. Returns the written paths, grid last.
    """
    out_dir = Path(out_dir)
    overlays = np.stack([overlay(f, c) for f, c in zip(frames, cam)])  # [T,H,W,3]
    paths = [save_png(o, out_dir / f"frame_{i + 1:05d}.png") for i, o in enumerate(overlays)]
    paths.append(save_png(grid(frames, overlays), out_dir / "grid.png"))
    return paths
