"""Downstream clips (linear probe, fine-tuning, retrieval) from a ``path,frames,label`` CSV.

``mode='train'``: one random clip per video, ``(clip [3, T, H, W], label)``, with CoCLR's
evaluation training augmentation: random resized crop (area 0.2-1, aspect 3/4-4/3, one box
per clip, drawn on the stored frame), horizontal flip (p 0.5, whole clip), colour jitter
(0.4, 0.4, 0.4, 0.1) with one draw for the whole clip applied with p 0.3, ImageNet
normalisation.
``mode='test'``: deterministic, ``(clips [N, 3, T, S, S], label)``: N clips from sliding windows
with at least half overlap covering the video, times ``views`` square crops of side
``test_crop`` x short side ('center'; 'five' = four corners + centre; 'ten' = five + their
flips); clip ``w * V + v`` is window w, view v. N varies with the video length: use
``batch_size=1``.
``lazy=True`` (test mode) gives ``clips`` as a :class:`VideoClips` instead, which holds each
needed frame's crops once, in uint8 (cropped and resized as the frame is decoded), and makes
the float clips only when asked: ``clips.split(n)`` yields ``[n, 3, T, S, S]`` n at a time,
``clips.tensor()`` gives the eager tensor bit for bit. A long video's N float clips take N x T
times the memory of its frames, so the evaluation code reads test sets lazily; collate with
``VideoClips.cat`` (or ``batch_size=1`` and ``collate_fn=lambda b: b[0]``).
A clip spans ``(seq - 1) * stride + 1`` frames; in a shorter video the indices are clamped
to the last frame (the last frame repeats), so no labelled video is dropped.
"""

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datasets.frames import Box, decode_size, frame_size, iter_frames, read_frames
from datasets.index import read_csv
from datasets.transforms import crop_resize, normalize, sample_box, view_boxes

UNLABELLED = -1  # the label of a video read with labelled=False from a path,frames CSV


def window_starts(frames: int, span: int) -> list[int]:
    """Starts of the fewest evenly spaced windows of ``span`` frames covering ``frames`` frames
    with at least half overlap (one window, at 0, if the video is not longer than ``span``)."""
    if frames <= span:
        return [0]
    count = math.ceil((frames - span) / (span / 2)) + 1
    return [round(k * (frames - span) / (count - 1)) for k in range(count)]


class VideoClips:
    """The N test clips of one video: uint8 crops of each needed frame, normalised on demand.

    ``crops`` uint8 ``[F, B, 3, S, S]``: every needed frame cropped to each of B distinct boxes;
    ``windows`` int64 ``[W, T]``: rows of ``crops`` of each window; ``views`` ``[(box, flip)]``, V of
    them. Clip ``k`` is window ``k // V`` seen through view ``k % V``.
    """

    def __init__(self, crops: torch.Tensor, windows: torch.Tensor, views: Sequence[tuple[int, bool]]):
        self.crops, self.windows, self.views = crops, windows, list(views)

    def __len__(self) -> int:
        return len(self.windows) * len(self.views)

    def clips(self, start: int, stop: int) -> torch.Tensor:
        """Clips ``start .. stop - 1``, normalised float ``[stop - start, 3, T, S, S]``."""
        k = torch.arange(start, min(stop, len(self)))
        view = k % len(self.views)
        box = torch.tensor([self.views[v][0] for v in view.tolist()], dtype=torch.long)  # [n]
        x = self.crops[self.windows[k // len(self.views)], box[:, None]]  # [n, T, 3, S, S] uint8
        flip = torch.tensor([self.views[v][1] for v in view.tolist()], dtype=torch.bool)
        if flip.any():
            x[flip] = x[flip].flip(-1)
        x = normalize(x.to(torch.float32).div_(255))
        return x.transpose(1, 2).contiguous()  # [n, 3, T, S, S]

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """The clips ``size`` at a time, in order (as ``Tensor.split`` on ``tensor()``)."""
        for start in range(0, len(self), size):
            yield self.clips(start, start + size)

    def tensor(self) -> torch.Tensor:
        """All N clips at once: float ``[N, 3, T, S, S]`` (4 bytes a value: mind long videos)."""
        return self.clips(0, len(self))

    @staticmethod
    def cat(items: Sequence["VideoClips"]) -> "VideoClips":
        """The clips of several videos (same views) after one another."""
        if any(item.views != items[0].views for item in items):
            raise ValueError("VideoClips.cat needs the same views for every video")
        offsets = torch.tensor([0] + [len(item.crops) for item in items[:-1]]).cumsum(0).tolist()
        return VideoClips(torch.cat([item.crops for item in items]),
                          torch.cat([item.windows + o for item, o in zip(items, offsets)]), items[0].views)


class ClipDataset(Dataset):
    """Labelled clips for evaluation; see the module docstring for the two modes.

    ``num_classes`` (default: max label + 1) bounds the labels read; ``self.num_classes``
    holds it. Rows name frame folders or video files. A missing or broken frame raises
    ``FrameDecodeError`` (``VideoDecodeError`` for a video file). ``labelled=False`` (test mode, for
    featurising unlabelled videos) also reads ``path,frames`` CSVs, whose videos get the label
    ``UNLABELLED`` (-1); ``self.num_classes`` is then 0 for them.
    """

    def __init__(self, csv_file, mode: str, seq: int = 16, img_dim: int = 112, *, stride: int = 1,
                 views: str = "center", num_classes: int | None = None,
                 crop_area: tuple[float, float] = (0.2, 1.0), test_crop: float = 0.875,
                 jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.3,
                 flip_p: float = 0.5, lazy: bool = False, labelled: bool = True):
        if mode not in ("train", "test"):
            raise ValueError(f"mode={mode!r}: expected 'train' or 'test'")
        if not labelled and mode != "test":
            raise ValueError("labelled=False is for test mode only: training needs labels")
        if seq < 1 or img_dim < 1 or stride < 1:
            raise ValueError(f"seq={seq}, img_dim={img_dim}, stride={stride}: all must be >= 1")
        view_boxes(1, 1, views, test_crop)  # validates views early
        self.mode, self.seq, self.img_dim, self.stride, self.views = mode, seq, img_dim, stride, views
        self.crop_area, self.test_crop, self.flip_p, self.lazy = crop_area, test_crop, flip_p, lazy
        self.videos = read_csv(csv_file, require_labels=labelled, num_classes=num_classes)
        if not labelled:
            self.videos = [v if v.label is not None else v._replace(label=UNLABELLED) for v in self.videos]
        self.num_classes = num_classes or max(video.label for video in self.videos) + 1
        self.color = v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p)

    def __len__(self) -> int:
        return len(self.videos)

    def _indices(self, start: int, frames: int) -> list[int]:
        """Frame indices of the clip starting at ``start``, clamped to the last frame."""
        return [min(start + t * self.stride, frames - 1) for t in range(self.seq)]

    def __getitem__(self, i: int) -> tuple["torch.Tensor | VideoClips", int]:
        video = self.videos[i]
        if self.mode == "test":
            clips = self.video_clips(i)
            return (clips if self.lazy else clips.tensor()), video.label
        span = (self.seq - 1) * self.stride + 1
        width, height = frame_size(video.path)
        start = int(torch.randint(0, max(video.frames - span, 0) + 1, ()).item())
        box = sample_box(width, height, self.crop_area)
        frames = read_frames(video.path, self._indices(start, video.frames),
                             decode_size([box], self.img_dim))  # [T, H, W, 3] uint8
        clip = crop_resize(frames, box, self.img_dim)  # [T, 3, S, S] uint8
        if torch.rand(()) < self.flip_p:
            clip = clip.flip(-1)
        x = self.color(clip.to(torch.float32, memory_format=torch.contiguous_format).div_(255))
        return normalize(x).transpose(0, 1).contiguous(), video.label  # [3, T, S, S]

    def video_clips(self, i: int, max_windows: int | None = None) -> VideoClips:
        """The test clips of video ``i`` (its first ``max_windows`` windows; default all), decoding
        only the frames they use, one at a time."""
        video = self.videos[i]
        span = (self.seq - 1) * self.stride + 1
        width, height = frame_size(video.path)
        views = view_boxes(width, height, self.views, self.test_crop)
        boxes: list[Box] = list(dict.fromkeys(box for box, _ in views))  # distinct, in order
        windows = [self._indices(start, video.frames) for start in window_starts(video.frames, span)[:max_windows]]
        needed = sorted({index for window in windows for index in window})
        row = {index: r for r, index in enumerate(needed)}
        crops = torch.empty(len(needed), len(boxes), 3, self.img_dim, self.img_dim, dtype=torch.uint8)
        for r, frame in enumerate(iter_frames(video.path, needed, decode_size(boxes, self.img_dim))):
            for b, box in enumerate(boxes):
                crops[r, b] = crop_resize(frame[None], box, self.img_dim)[0]  # [3, S, S]
        return VideoClips(crops, torch.tensor([[row[index] for index in window] for window in windows]),
                          [(boxes.index(box), flip) for box, flip in views])


class CentreClipDataset(Dataset):
    """One deterministic clip per video of a ``path,frames,label`` CSV: ``(clip [3, T, S, S], label)``.

    The clip is the ``seq`` frames in the middle of the video (``window="first"`` / ``"last"``: the
    first / last ``seq`` frames; clamped to the last frame in a shorter video), centre crop of side
    ``test_crop`` x short side, resized to ``img_dim``, ImageNet-normalised; no randomness. With
    ``static=True`` every step of the clip is the window's first frame: the video's appearance with
    its motion removed. For cheap, bounded-memory monitoring during pretraining (one clip per video,
    not all windows) and for the diagnostics of ``evaluation.monitor.video_identity``.
    """

    WINDOWS = ("centre", "first", "last")

    def __init__(self, csv_file, seq: int = 16, img_dim: int = 112, *, test_crop: float = 0.875,
                 window: str = "centre", static: bool = False):
        if seq < 1 or img_dim < 1:
            raise ValueError(f"seq={seq}, img_dim={img_dim}: both must be >= 1")
        if window not in self.WINDOWS:
            raise ValueError(f"window={window!r}: choose from {self.WINDOWS}")
        self.seq, self.img_dim, self.test_crop, self.window, self.static = seq, img_dim, test_crop, window, static
        self.videos = read_csv(csv_file, require_labels=True)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        video = self.videos[i]
        spare = max(video.frames - self.seq, 0)
        start = {"centre": spare // 2, "first": 0, "last": spare}[self.window]
        indices = [min(start + t, video.frames - 1) for t in range(self.seq)]
        if self.static:
            indices = indices[:1] * self.seq
        width, height = frame_size(video.path)
        [(box, _)] = view_boxes(width, height, "center", self.test_crop)
        frames = read_frames(video.path, indices, decode_size([box], self.img_dim))  # [T, H, W, 3] uint8
        x = crop_resize(frames, box, self.img_dim).to(torch.float32).div_(255)  # [T, 3, S, S]
        return normalize(x).transpose(0, 1).contiguous(), video.label  # [3, T, S, S]
