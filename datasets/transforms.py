"""Clip augmentations: crop boxes, crop + resize of uint8 frames, per-frame gray and jitter.

torchvision draws the crop boxes (``sample_box``); torch resizes (``resize_crops``). What
torchvision lacks, per-frame "random gray" (one random RGB channel copied to all three) and
per-frame colour jitter, is ``datasets.jitter``: one frame of the output equals calling torchvision's
``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` / ``adjust_hue`` on that
frame in its drawn order, then ``normalize``. Randomness comes from torch's global generator
(seeded per sample by the training loop).
"""

from typing import Sequence

import numpy as np
import torch
from torchvision import transforms
from torchvision.transforms.v2 import functional as F

from datasets.frames import Box
from datasets.jitter import jitter_frames

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN, _STD = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)


def pixel_box(box: Box, width: int, height: int) -> tuple[slice, slice]:
    """``box`` rounded to whole pixels of a ``width`` x ``height`` frame: (rows, columns) slices."""
    left, top = round(box[0] * width), round(box[1] * height)
    right, bottom = max(round(box[2] * width), left + 1), max(round(box[3] * height), top + 1)
    return slice(top, bottom), slice(left, right)


def resize_crops(crops: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 crops ``[T, h, w, 3]`` to ``size`` x ``size`` (bilinear, antialiased, as
    torchvision's ``resized_crop``): uint8 ``[T, 3, size, size]`` in channels-last memory (the
    fast path of torch's uint8 resize, which also runs faster on compact crops than on views
    into whole frames)."""
    return torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                           align_corners=False, antialias=True)


def crop_resize(frames: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop ``box`` from uint8 frames ``[T, H, W, 3]`` and resize it to ``size`` x ``size``:
    uint8 ``[T, 3, size, size]`` (see ``resize_crops``). The box is rounded to whole pixels of
    the given frames."""
    rows, columns = pixel_box(box, frames.shape[2], frames.shape[1])
    return resize_crops(frames[:, rows, columns].contiguous(), size)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of ``[..., 3, H, W]`` (in place)."""
    return F.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD), inplace=True)


def denormalize(x: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Undo ``normalize``: back to [0, 1] (clamped); ``channel_dim=0`` fits a clip ``[3, T, H, W]``."""
    shape = [1] * x.dim()
    shape[channel_dim] = 3
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return (x * std + mean).clamp_(0, 1)


def sample_box(ref_w: int, ref_h: int, area: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """A random-resized-crop box drawn on a ``ref_w`` x ``ref_h`` frame, as fractions.

    torchvision's ``RandomResizedCrop`` sampler (area fraction, log-uniform aspect, 10 tries,
    centre fallback). Drawing in a reference geometry and mapping the fractions to the decoded
    frame gives the crops of "resize every frame to ref size, then crop" without the resize.
    """
    ref = torch.empty(1, 1, 1).expand(1, ref_h, ref_w)  # only its shape is read
    top, left, height, width = transforms.RandomResizedCrop.get_params(ref, list(area), list(ratio))
    return (left / ref_w, top / ref_h, (left + width) / ref_w, (top + height) / ref_h)


def view_boxes(width: int, height: int, views: str, crop: float) -> list[tuple[Box, bool]]:
    """Deterministic test crops of a ``width`` x ``height`` frame: ``[(box, hflip), ...]``.

    Square crops of side ``crop`` x short side; 'center': the centre one; 'five': top-left,
    top-right, bottom-left, bottom-right, centre; 'ten': the five, then the five flipped.
    """
    if views not in ("center", "five", "ten"):
        raise ValueError(f"views={views!r}: expected 'center', 'five' or 'ten'")
    side = crop * min(width, height)
    fw, fh = side / width, side / height  # box size as fractions
    cx, cy = (1 - fw) / 2, (1 - fh) / 2
    corners = [(0.0, 0.0), (1 - fw, 0.0), (0.0, 1 - fh), (1 - fw, 1 - fh), (cx, cy)]
    boxes = [((x, y, x + fw, y + fh), False) for x, y in corners]
    if views == "center":
        return boxes[-1:]
    if views == "five":
        return boxes
    return boxes + [(box, True) for box, _ in boxes]


def draw_jitter(n: int, brightness: float, contrast: float, saturation: float,
                hue: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame jitter ``factors [n, 4]`` and ``order [n, 4]``, drawn as torchvision's ColorJitter.

    Brightness/contrast/saturation ~ U[max(0, 1 - v), 1 + v], hue ~ U[-hue, hue]; each row of
    ``order`` is a random permutation of the op ids.
    """
    low = torch.tensor([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue])
    high = torch.tensor([1 + brightness, 1 + contrast, 1 + saturation, hue])
    factors = low + (high - low) * torch.rand(n, 4)  # [n, 4]
    order = torch.rand(n, 4).argsort(dim=1)  # [n, 4]
    return factors, order


def augment_frames(frames: torch.Tensor, gray: torch.Tensor, channel: torch.Tensor,
                   factors: torch.Tensor, order: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per-frame gray, colour jitter and ImageNet normalisation of uint8 ``frames [N, 3, H, W]``.

    Frame n: if ``gray[n]``, channel ``channel[n]`` is copied to all three; then the jitter ops
    with ``factors[n]`` (brightness, contrast, saturation, hue) in the order ``order[n]``
    (torchvision's ops, see ``datasets.jitter``). The result is written to float
    ``out [..., 3, H, W]`` (4 or 5 dims), whose leading dims enumerate the N frames in row-major
    order; it may be a strided view, e.g. ``[K, 3, T, H, W].transpose(1, 2)``. Returns ``out``.
    """
    n, _, height, width = frames.shape
    if out.dim() not in (4, 5) or out.shape[-3:] != (3, height, width) or out.shape[:-3].numel() != n:
        raise ValueError(f"out {tuple(out.shape)} does not hold {n} frames of 3x{height}x{width} "
                         "as [N, 3, H, W] or [A, B, 3, H, W]")
    pixels = frames.permute(0, 2, 3, 1).contiguous().view(n, height * width, 3)  # no copy for channels-last
    target = out.view(*out.shape[:-2], height * width)  # [..., 3, H*W]: a view, or an error
    jitter_frames(pixels.numpy(), gray.bool().contiguous().numpy(), channel.long().contiguous().numpy(),
                  factors.float().contiguous().numpy(), order.long().contiguous().numpy(), _MEAN, _STD,
                  (target if out.dim() == 5 else target.unsqueeze(0)).numpy())
    return out


def random_augment_frames(frames: torch.Tensor, jitter: Sequence[float], gray_p: float,
                          out: torch.Tensor) -> torch.Tensor:
    """``augment_frames`` with a random draw per frame: gray with probability ``gray_p`` (one
    random channel), jitter strengths ``jitter`` = (brightness, contrast, saturation, hue)."""
    n = frames.shape[0]
    gray, channel = torch.rand(n) < gray_p, torch.randint(0, 3, (n,))
    factors, order = draw_jitter(n, *jitter)
    return augment_frames(frames, gray, channel, factors, order, out)
