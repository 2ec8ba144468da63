"""Small synthetic videos for the tests, encoded with PyAV (no test module; imported by several)."""

from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np


def grey_frames(count: int, size=(64, 48)) -> list[np.ndarray]:
    """Frame i is a solid grey of level 10 + 4 i (as the frame-folder tests' videos)."""
    return [np.full((size[1], size[0], 3), 10 + 4 * i, np.uint8) for i in range(count)]


def textured_frames(count: int, size=(64, 48), seed: int = 0) -> list[np.ndarray]:
    """A fixed random block texture with a bright square moving 2 pixels a frame and a red level
    rising 3 a frame: neighbouring frames differ clearly, even after JPEG and YUV rounding."""
    rng = np.random.default_rng(seed)
    width, height = size
    texture = rng.integers(40, 200, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    base = texture.repeat(16, 0).repeat(16, 1)[:height, :width]
    frames = []
    for i in range(count):
        image = base.copy()
        image[..., 0] = (30 + 5 * i) % 256
        x = (2 * i) % (width - 12)
        image[height // 2 - 6:height // 2 + 6, x:x + 12] = 250
        frames.append(image)
    return frames


def encode(path: Path, images: Sequence[np.ndarray], codec: str = "libx264", rate: int = 30, gop: int = 30,
           pts: Optional[Sequence[int]] = None, options: Optional[dict] = None) -> Path:
    """Encode RGB ``images`` to ``path`` (container from its extension) with a keyframe exactly
    every ``gop`` frames; ``pts``: explicit timestamps in units of 1 / ``rate`` (variable rate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "sc_threshold": "0", **(options or {})}
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def sequential_decode(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` in decoding order, as RGB arrays: the reference the tests compare with."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def audio_only(path: Path) -> Path:
    """A Matroska file with one silent audio stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
