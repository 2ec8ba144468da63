"""Decoding frames of a video file (mp4, avi, mkv, webm) with PyAV: the counterpart of ``datasets.frames``.

Frame index i of a video is its i-th decoded frame, the frame ``scripts/extract_frames.py`` writes
as ``image_{i+1:05d}.jpg``. Opening a video reads its packets once (demuxing only, no decoding:
about 2 ms for 10 s of 456x256 H.264) and numbers them by presentation time: frame i is the frame
of the packet with the i-th smallest timestamp. No frame rate is assumed, so variable-frame-rate
files are read right; container frame counts, often wrong, are not used.

Reading a set of indices seeks to the keyframe at or before the first one, decodes forward and
converts only the needed frames to RGB; it seeks again only when a later needed frame lies past
another keyframe (skipping the frames in between), or for an index behind the decoder. Frames
that are not needed and that no other frame references are not decoded at all (FFmpeg's
``skip_frame``), which about halves the frames a sample decodes without using them. Each
decoded frame's timestamp is checked against the packet numbering, so a damaged file, a file
shorter than its CSV row says or a seek that lands on the wrong frame raises ``VideoDecodeError``
(a ``FrameDecodeError``) naming the file and the frame index, never a wrong frame.

The decoder runs one thread: a DataLoader already runs one worker per core, so decoder threads
would compete for the same cores, and FFmpeg's frame threading holds back one frame per thread,
work that each seek throws away. Colour conversion goes through one ``VideoReformatter`` per
open video, which keeps swscale's context between frames (a new context per frame, as
``VideoFrame.reformat`` makes, costs more than the conversion itself). Frames are converted at
full size, whatever the crops need: swscale's unscaled YUV -> RGB path is its fastest (at
456x256, converting at 1/2 size took 1.5x as long, at 1/4 as long as at full size) and its scaled
path shifts colours by about one level. The crops are then cut from full frames, as
``datasets.frames`` does whenever a JPEG cannot be decoded at reduced scale (the paper's
configuration: 112-pixel crops from 320x240 frames).

torch is imported by the functions that return tensors, so that counting frames
(``count_frames``, run by ``scripts/make_csv.py``'s worker processes) does not load it.
"""

import bisect
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import av
from av.video.reformatter import VideoReformatter

from datasets.index import FrameDecodeError

if TYPE_CHECKING:
    import numpy as np
    import torch


class VideoDecodeError(FrameDecodeError):
    """A video file cannot be opened or one of its frames cannot be decoded; ``.path`` names the
    file, ``.index`` the 0-based frame (None when the whole file is unreadable), ``.reason`` why."""

    def __init__(self, path, index: int | None, reason: str,
                 advice: str = "re-encode or replace this video, or drop it from the CSV"):
        self.path, self.index, self.reason = Path(path), index, reason
        where = f"video {self.path}" if index is None else f"frame {index} of video {self.path}"
        OSError.__init__(self, f"cannot decode {where}: {reason}; {advice}")


def number_packets(packets: Sequence[tuple[int, bool]]) -> tuple[list[int], list[int]]:
    """Frame numbering of a stream's ``(pts, is_keyframe)`` packets (in any order): the
    timestamps in presentation order (frame i has the i-th smallest) and the keyframes' indices.
    Raises ValueError if two packets share a timestamp."""
    ordered = sorted(packets)
    pts = [time for time, _ in ordered]
    if len(set(pts)) != len(pts):
        duplicate = next(a for a, b in zip(pts, pts[1:]) if a == b)
        raise ValueError(f"two packets have timestamp {duplicate}")
    return pts, [i for i, (_, key) in enumerate(ordered) if key]


class VideoReader:
    """An open video file: its frames numbered by presentation time, read by index.

    Use as a context manager (it closes the file). ``frames`` is the number of frames the packets
    promise; ``size`` the (width, height) of the stream.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as error:
            raise VideoDecodeError(self.path, None, f"cannot open it ({error})") from error
        try:
            if not self.container.streams.video:
                raise VideoDecodeError(self.path, None, "it has no video stream")
            self.stream = stream = self.container.streams.video[0]
            stream.codec_context.thread_count = 1  # one worker per core already (module docstring)
            self.size = (stream.codec_context.width, stream.codec_context.height)
            if min(self.size) < 1:
                raise VideoDecodeError(self.path, None, "its video stream has no frame size")
            self._number_packets()
        except BaseException:
            self.container.close()
            raise
        self.reformatter = VideoReformatter()
        self._wanted = lambda index: True  # frames the decoder must give (others it may skip)
        self._frames = None  # decoding generator after the last seek
        self._position = -1  # index of the last frame it gave
        self._base = 0  # keyframe index of the last seek: frames before it may lack references

    def _number_packets(self) -> None:
        """``self.pts[i]``: timestamp of frame i; ``self.keys``: indices of keyframes, ascending."""
        packets, self.damage = [], None
        try:
            for packet in self.container.demux(self.stream):
                if packet.size and not packet.is_discard:
                    if packet.pts is None:
                        raise VideoDecodeError(self.path, None, f"its packet {len(packets)} has no timestamp, "
                                               "so frames cannot be numbered")
                    packets.append((packet.pts, packet.is_keyframe))
        except av.FFmpegError as error:  # truncated or damaged: the frames before it remain readable
            self.damage = f"the file is damaged after {len(packets)} packets ({error})"
        try:
            self.pts, self.keys = number_packets(packets)
        except ValueError as error:
            raise VideoDecodeError(self.path, None, f"{error}, so frames cannot be numbered") from None
        self.index = {pts: i for i, pts in enumerate(self.pts)}
        self.frames = len(self.pts)

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._frames = None
        self.container.close()

    def _seek(self, key: int) -> None:
        """Restart decoding at the keyframe ``key`` (a frame index) or before."""
        self.container.seek(self.pts[key], stream=self.stream, backward=True)
        self._frames = self._decode()
        self._position, self._base = -1, key

    def _decode(self) -> Iterator["av.VideoFrame"]:
        """Decoded frames from the demuxer's position on, fed packet by packet: the packet of a frame
        that ``self._wanted`` rejects is decoded with ``skip_frame = NONREF``, so a frame that no
        other frame references is not decoded at all (libavcodec's H.264, MPEG-4, VP8/VP9 decoders
        honour it; others decode everything). Reference frames are always decoded, so the frames
        that are kept do not change."""
        context = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            index = self.index.get(packet.pts) if packet.size else None
            context.skip_frame = "NONREF" if index is not None and not self._wanted(index) else "DEFAULT"
            yield from context.decode(packet)

    def _next(self, target: int):
        """The next decoded frame and its index, or (None, None) at the end of the stream; a
        VideoDecodeError naming ``target`` if the decoder fails or the frame's timestamp is unknown."""
        try:
            frame = next(self._frames, None)
        except (av.FFmpegError, OSError) as error:
            raise VideoDecodeError(self.path, target, f"the decoder failed ({error})") from error
        if frame is None:
            return None, None
        index = self.index.get(frame.pts)
        if index is None:
            raise VideoDecodeError(self.path, target, f"a decoded frame has timestamp {frame.pts}, which no "
                                   "packet has (irregular timestamps)")
        return frame, index

    def decode_to(self, target: int, keep) -> Iterator[tuple[int, "av.VideoFrame"]]:
        """Decode up to frame ``target``, yielding ``(index, frame)`` for it and for each frame on the
        way for which ``keep(index)`` is true. Seeks when ``target`` is behind the decoder or past
        a keyframe it has not reached."""
        if target >= self.frames:
            reason = f"the video has {self.frames} frames" + (f" ({self.damage})" if self.damage else "")
            raise VideoDecodeError(self.path, target, reason, "its CSV row's frame count is wrong: rebuild the "
                                   "CSV with scripts/make_csv.py videos")
        before = bisect.bisect_right(self.keys, target)  # keyframes at or before the target
        key = self.keys[before - 1] if before else 0  # none: from the start, as a sequential decode
        self._wanted = lambda index: index == target or keep(index)
        if self._frames is None or target <= self._position or key > self._position + 1:
            self._seek(key)
        retried = False
        while True:
            frame, index = self._next(target)
            if frame is None:
                where = f"after frame {self._position}" if self._position >= 0 else \
                    f"before any frame from the keyframe at frame {self._base} on"
                raise VideoDecodeError(self.path, target, f"the stream ends {where}"
                                       + (f"; {self.damage}" if self.damage else ""))
            if index > target and self._position < target:  # the seek landed past the target
                if retried or self._base == 0:
                    raise VideoDecodeError(self.path, target, f"decoding gives frame {index} where frame "
                                           f"{target} should come (irregular timestamps or a bad seek)")
                self._seek(0)  # decode everything from the start instead
                self._wanted = lambda index: True
                retried = True
                continue
            self._position = max(self._position, index)
            if index == target:
                yield index, frame
                return
            if index >= self._base and keep(index):
                yield index, frame

    def to_rgb(self, frame) -> "np.ndarray":
        """``frame`` as RGB uint8 ``[H, W, 3]`` at the stream's frame size (a new, writable array)."""
        width, height = self.size
        return self.reformatter.reformat(frame, width=width, height=height, format="rgb24").to_ndarray()


def frame_size(path) -> tuple[int, int]:
    """(width, height) of a video's frames, from its stream header."""
    with VideoReader(path) as video:
        return video.size


def iter_frames(path, indices: Sequence[int], need: tuple[int, int] | None = None) -> Iterator["torch.Tensor"]:
    """Frames ``indices`` (0-based, may repeat, any order) of a video file in turn, each uint8 ``[H, W, 3]``.

    As ``datasets.frames.iter_frames``: each distinct frame is decoded once and kept only until its
    last use. ``need`` is accepted for the same signature; frames always come at full size (see the
    module docstring). The file is open while the iterator runs.
    """
    import torch

    last_use = {index: position for position, index in enumerate(indices)}
    kept: dict[int, torch.Tensor] = {}
    with VideoReader(path) as video:
        for position, index in enumerate(indices):
            if index not in kept:
                wanted = lambda i: i not in kept and last_use.get(i, -1) > position  # noqa: E731 (needed later)
                for got, frame in video.decode_to(index, wanted):
                    kept[got] = torch.from_numpy(video.to_rgb(frame))
            image = kept[index]
            if last_use[index] == position:
                del kept[index]
            yield image


def read_frames(path, indices: Sequence[int], need: tuple[int, int] | None = None) -> "torch.Tensor":
    """``iter_frames`` stacked: uint8 ``[N, H, W, 3]``."""
    import torch

    return torch.stack(list(iter_frames(path, indices, need)))


def count_frames(path) -> int:
    """Number of frames a full decode of ``path`` gives, checked against the packet numbering.

    Every frame is decoded (not converted): container headers often give a wrong count or none.
    Raises ``VideoDecodeError`` when the file cannot be opened, has no video stream or no frames,
    is damaged, fails to decode, or when the decoded frames' timestamps do not follow the
    packets' (then reading by index could give other frames than a sequential decode: extract its
    frames instead). Packets at the end that give no frame are not counted.
    """
    with VideoReader(path) as video:  # decodes every frame: _wanted stays always true
        if video.damage:
            raise VideoDecodeError(path, None, video.damage)
        video._seek(0)
        count = 0
        while (frame := video._next(count)[0]) is not None:
            if count >= video.frames or frame.pts != video.pts[count]:
                raise VideoDecodeError(path, count, "decoded timestamps do not follow the packets' (frame "
                                       f"{count} has {frame.pts}), so frames cannot be read by index",
                                       "extract its frames with scripts/extract_frames.py, or re-encode it")
            count += 1
        if count == 0:
            raise VideoDecodeError(path, None, "no frames decoded")
        return count  # fewer than the packets if the last ones do not decode: frames 0..count-1 still do
