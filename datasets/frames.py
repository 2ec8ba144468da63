"""Decoding frames of a frame folder once each, at reduced size when possible.

``frame_size``, ``iter_frames`` and ``read_frames`` also take a video file (a path with a video
extension, see ``datasets.index.is_video_file``) and hand it to ``datasets.videos``, which gives
the same frames (index i = ``image_{i+1:05d}.jpg`` of its extraction), always at full size.
PyAV is imported only then: frame folders are read without it.

Full-size JPEGs go through torchvision's decoder (libjpeg-turbo, like PIL, but it writes RGB
straight into a tensor: about 10-20% less time per frame than PIL's open + decode + copy);
reduced-size decoding (JPEG DCT scaling, PIL's ``draft``) and every file that decoder refuses
(not a JPEG, truncated, missing) go through PIL, which also names what is wrong with a broken file.
"""

import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

try:  # torchvision's JPEG decoder (its Python wrapper, deprecated since torchvision 0.29, only adds a warning)
    import torchvision.io  # registers the op
    _decode_jpeg, _RGB = torch.ops.image.decode_jpeg, torchvision.io.ImageReadMode.RGB.value
except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - a torchvision without it
    _decode_jpeg = None  # PIL decodes everything

from datasets.index import FrameDecodeError, frame_name, is_video_file

# A crop box as fractions of the frame: (left, top, right, bottom), each in [0, 1].
Box = tuple[float, float, float, float]


def frame_size(folder, index: int = 0) -> tuple[int, int]:
    """(width, height) of a frame, read from its header without decoding the pixels (of a video
    file: its stream's frame size)."""
    if is_video_file(folder):
        from datasets import videos  # PyAV: loaded only when a video file is read

        return videos.frame_size(folder)
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


def _decode_pil(path: Path, need: tuple[int, int]) -> torch.Tensor:
    """Decode ``path`` with PIL to RGB ``[H, W, 3]`` uint8, at the smallest JPEG scale (1, 1/2,
    1/4, 1/8) whose size is still at least ``need`` = (w, h)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", need)
            if image.mode != "RGB":
                image = image.convert("RGB")
            return torch.from_numpy(np.array(image))
    except (OSError, ValueError) as error:
        raise FrameDecodeError(path, str(error)) from error


def _read_file(path: Path) -> torch.Tensor:
    """The bytes of ``path`` as a uint8 tensor (read straight into a buffer of the file's size)."""
    if hasattr(os, "readv"):
        fd = os.open(path, os.O_RDONLY)
        try:
            data = bytearray(os.fstat(fd).st_size)
            view, done = memoryview(data), 0
            while done < len(data) and (got := os.readv(fd, [view[done:]])):
                done += got
        finally:
            os.close(fd)
    else:  # not POSIX
        data = bytearray(path.read_bytes())
    return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def _decode(path: Path, need: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode ``path`` to RGB ``[H, W, 3]`` uint8: at full size with torchvision's JPEG decoder
    when ``need`` is None, else, or for a file that decoder refuses, with PIL."""
    if need is None and _decode_jpeg is not None:
        try:
            return _decode_jpeg(_read_file(path), _RGB, False).permute(1, 2, 0)  # HWC memory
        except (OSError, RuntimeError):
            pass  # missing, truncated, or not a JPEG: PIL decodes it or names the problem
    return _decode_pil(path, need or (1 << 30, 1 << 30))


def iter_frames(folder, indices: Sequence[int], need: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
    """Frames ``indices`` (0-based, may repeat) of ``folder`` in turn, each uint8 ``[H, W, 3]``.

    Each distinct frame is decoded once and kept only until its last use (a repeated index
    gives the same tensor again), so a caller that uses each frame as it comes holds one frame
    at a time. With ``need`` = (w, h), frames are decoded at the reduced JPEG scale (1/2, 1/4,
    1/8) that keeps at least that many pixels, when the frames (size read from the first one's
    header) are large enough for one; otherwise at full size. All frames must have one size.
    A video file is read by ``datasets.videos.iter_frames``: the same frames, at full size.
    """
    folder = Path(folder)
    if is_video_file(folder):
        from datasets import videos  # PyAV: loaded only when a video file is read

        yield from videos.iter_frames(folder, indices, need)
        return
    if need is not None and _jpeg_scale(frame_size(folder, indices[0]), need) == 1:
        need = None  # full size anyway: the faster full-size decoder
    last_use = {index: position for position, index in enumerate(indices)}
    kept: dict[int, torch.Tensor] = {}
    shape = None
    for position, index in enumerate(indices):
        image = kept.get(index)
        if image is None:
            image = kept[index] = _decode(folder / frame_name(index), need)
            shape = shape or image.shape
            if image.shape != shape:
                raise FrameDecodeError(folder / frame_name(index),
                                       f"size {image.shape[1]}x{image.shape[0]} differs from the "
                                       f"first frame's {shape[1]}x{shape[0]}")
        if last_use[index] == position:
            del kept[index]
        yield image


def read_frames(folder, indices: Sequence[int], need: tuple[int, int] | None = None) -> torch.Tensor:
    """``iter_frames`` stacked: uint8 ``[N, H, W, 3]``."""
    return torch.stack(list(iter_frames(folder, indices, need)))
