"""Decoding frames of a frame folder once each, at reduced size when possible."""

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

try:  # deprecated in torchvision 0.29 and slated for removal; PIL takes over where it is gone
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _decode_jpeg
except ImportError:  # pragma: no cover - depends on the torchvision release
    _decode_jpeg = None

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


def _jpeg_scale(size: tuple[int, int], need: tuple[int, int]) -> int:
    """The JPEG reduction (1, 2, 4 or 8) that PIL's ``draft`` picks for a ``size`` frame asked
    for at least ``need`` = (w, h) pixels."""
    fit = min(size[0] // max(need[0], 1), size[1] // max(need[1], 1))
    return max((s for s in (8, 4, 2, 1) if s <= fit), default=1)


def _decode_pil(path: Path, need: tuple[int, int]) -> np.ndarray:
    """Decode ``path`` with PIL to RGB ``[H, W, 3]`` uint8, at the smallest JPEG scale (1, 1/2,
    1/4, 1/8) whose size is still at least ``need`` = (w, h)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", need)
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image)
    except (OSError, ValueError) as error:
        raise FrameDecodeError(path, str(error)) from error


def _decode(path: Path, need: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to RGB ``[H, W, 3]`` uint8: at full size with torchvision's JPEG decoder
    when ``need`` is None (libjpeg-turbo, as PIL, but writing RGB straight into the tensor:
    about 20% faster than PIL here), else, or for a file it cannot read, with PIL."""
    if need is None and _decode_jpeg is not None:
        try:
            data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
            return _decode_jpeg(data, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()  # a view of HWC memory
        except (OSError, RuntimeError):
            pass  # missing, truncated, or not a JPEG: PIL decodes it or names the problem
    return _decode_pil(path, need or (1 << 30, 1 << 30))


def read_frames(folder, indices: Sequence[int], need: tuple[int, int] | None = None) -> torch.Tensor:
    """Frames ``indices`` (0-based, may repeat) of ``folder`` as uint8 ``[N, H, W, 3]``.

    Each distinct frame is decoded once. With ``need`` = (w, h), frames are decoded at the
    reduced JPEG scale (1/2, 1/4, 1/8) that keeps at least that many pixels, when the frames
    (size read from the first one's header) are large enough for one; otherwise at full size.
    All frames must have one size.
    """
    folder = Path(folder)
    if need is not None and _jpeg_scale(frame_size(folder, indices[0]), need) == 1:
        need = None  # full size anyway: the faster full-size decoder
    out = None
    first: dict[int, int] = {}  # frame index -> first row holding it
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders (see _decode)
        warnings.simplefilter("ignore", DeprecationWarning)
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
