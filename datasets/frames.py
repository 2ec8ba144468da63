"""Decoding frames of a frame folder once each, at reduced size when possible."""

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from datasets.index import frame_name

# A crop box as fractions of the frame: (left, top, right, bottom), each in [0, 1].
Box = tuple[float, float, float, float]


class FrameDecodeError(OSError):
    """A frame file is missing or cannot be decoded; ``.path`` names it."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        super().__init__(f"cannot decode frame {self.path}: {reason}; re-extract this video "
                         "with scripts/extract_frames.py or drop it from the CSV")


def frame_size(folder, index: int = 0) -> tuple[int, int]:
    """(width, height) of a frame, read from its header without decoding the pixels."""
    path = Path(folder) / frame_name(index)
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise FrameDecodeError(path, str(error)) from error


def decode_size(boxes: Sequence[Box], size: int) -> tuple[int, int]:
    """Smallest decoded (w, h) at which every box keeps at least ``size`` pixels a side."""
    return (max(math.ceil(size / (right - left)) for left, _, right, _ in boxes),
            max(math.ceil(size / (bottom - top)) for _, top, _, bottom in boxes))


def _decode(path: Path, need: tuple[int, int]) -> np.ndarray:
    """Decode ``path`` to RGB ``[H, W, 3]`` uint8 at the smallest JPEG scale (1, 1/2, 1/4, 1/8)
    whose size is still at least ``need`` = (w, h)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", need)
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image)
    except (OSError, ValueError) as error:
        raise FrameDecodeError(path, str(error)) from error


def read_frames(folder, indices: Sequence[int], need: tuple[int, int] = (1 << 30, 1 << 30)) -> torch.Tensor:
    """Frames ``indices`` (0-based, may repeat) of ``folder`` as uint8 ``[N, H, W, 3]``.

    Each distinct frame is decoded once, at the reduced JPEG scale that keeps at least ``need``
    = (w, h) pixels (the default keeps full size); all frames must have one size.
    """
    folder = Path(folder)
    out = None
    first: dict[int, int] = {}  # frame index -> first row holding it
    for row, index in enumerate(indices):
        if index in first:
            out[row] = out[first[index]]
            continue
        first[index] = row
        image = _decode(folder / frame_name(index), need)
        if out is None:
            out = np.empty((len(indices), *image.shape), np.uint8)  # [N, H, W, 3]
        elif image.shape != out.shape[1:]:
            raise FrameDecodeError(folder / frame_name(index),
                                   f"size {image.shape[1]}x{image.shape[0]} differs from the "
                                   f"first frame's {out.shape[2]}x{out.shape[1]}")
        out[row] = image
    return torch.from_numpy(out)
