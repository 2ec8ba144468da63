"""Downstream clips (linear probe, fine-tuning, retrieval) from a ``path,frames,label`` CSV.

``mode='train'``: one random clip per video, ``(clip [3, T, H, W], label)``, with CoCLR's
evaluation training augmentation: random resized crop (area 0.2-1, aspect 3/4-4/3, one box
per clip, drawn on the stored frame), horizontal flip (p 0.5, whole clip), colour jitter
(0.4, 0.4, 0.4, 0.1) with one draw for the whole clip applied with p 0.3, ImageNet
normalisation.
``mode='test'``: deterministic, ``(clips [N, 3, T, H, W], label)``: sliding windows with at
least half overlap covering the video, times ``views`` square crops of side ``test_crop`` x
short side ('center'; 'five' = four corners + centre; 'ten' = five + their flips); clip
``w * V + v`` is window w, view v. N varies with the video length: use ``batch_size=1`` or
a collate that concatenates.
A clip spans ``(seq - 1) * stride + 1`` frames; in a shorter video the indices are clamped
to the last frame (the last frame repeats), so no labelled video is dropped.
"""

import math
from typing import Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datasets.frames import decode_size, frame_size, read_frames
from datasets.index import read_csv
from datasets.transforms import crop_resize, normalize, sample_box, view_boxes


def window_starts(frames: int, span: int) -> list[int]:
    """Starts of the fewest evenly spaced windows of ``span`` frames covering ``frames`` frames
    with at least half overlap (one window, at 0, if the video is not longer than ``span``)."""
    if frames <= span:
        return [0]
    count = math.ceil((frames - span) / (span / 2)) + 1
    return [round(k * (frames - span) / (count - 1)) for k in range(count)]


class ClipDataset(Dataset):
    """Labelled clips for evaluation; see the module docstring for the two modes.

    ``num_classes`` (default: max label + 1) bounds the labels read; ``self.num_classes``
    holds it. Rows name frame folders or video files. A missing or broken frame raises
    ``FrameDecodeError`` (``VideoDecodeError`` for a video file).
    """

    def __init__(self, csv_file, mode: str, seq: int = 16, img_dim: int = 112, *, stride: int = 1,
                 views: str = "center", num_classes: int | None = None,
                 crop_area: tuple[float, float] = (0.2, 1.0), test_crop: float = 0.875,
                 jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.3,
                 flip_p: float = 0.5):
        if mode not in ("train", "test"):
            raise ValueError(f"mode={mode!r}: expected 'train' or 'test'")
        if seq < 1 or img_dim < 1 or stride < 1:
            raise ValueError(f"seq={seq}, img_dim={img_dim}, stride={stride}: all must be >= 1")
        view_boxes(1, 1, views, test_crop)  # validates views early
        self.mode, self.seq, self.img_dim, self.stride, self.views = mode, seq, img_dim, stride, views
        self.crop_area, self.test_crop, self.flip_p = crop_area, test_crop, flip_p
        self.videos = read_csv(csv_file, require_labels=True, num_classes=num_classes)
        self.num_classes = num_classes or max(video.label for video in self.videos) + 1
        self.color = v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p)

    def __len__(self) -> int:
        return len(self.videos)

    def _indices(self, start: int, frames: int) -> list[int]:
        """Frame indices of the clip starting at ``start``, clamped to the last frame."""
        return [min(start + t * self.stride, frames - 1) for t in range(self.seq)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        video = self.videos[i]
        span = (self.seq - 1) * self.stride + 1
        width, height = frame_size(video.path)
        if self.mode == "train":
            start = int(torch.randint(0, max(video.frames - span, 0) + 1, ()).item())
            box = sample_box(width, height, self.crop_area)
            frames = read_frames(video.path, self._indices(start, video.frames),
                                 decode_size([box], self.img_dim))  # [T, H, W, 3] uint8
            clip = crop_resize(frames, box, self.img_dim)  # [T, 3, S, S] uint8
            if torch.rand(()) < self.flip_p:
                clip = clip.flip(-1)
            x = self.color(clip.to(torch.float32, memory_format=torch.contiguous_format).div_(255))
            return normalize(x).transpose(0, 1).contiguous(), video.label  # [3, T, S, S]
        views = view_boxes(width, height, self.views, self.test_crop)
        windows = [self._indices(start, video.frames) for start in window_starts(video.frames, span)]
        needed = sorted({index for window in windows for index in window})
        row = {index: r for r, index in enumerate(needed)}
        frames = read_frames(video.path, needed, decode_size([box for box, _ in views], self.img_dim))
        clips = []
        for window in windows:
            selected = frames[[row[index] for index in window]]  # [T, H, W, 3]
            crops = {box: crop_resize(selected, box, self.img_dim) for box, _ in views}
            clips += [crops[box].flip(-1) if flip else crops[box] for box, flip in views]
        x = torch.stack(clips).to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        return normalize(x).transpose(1, 2).contiguous(), video.label  # [N, 3, T, S, S]


class CentreClipDataset(Dataset):
    """One deterministic clip per video of a ``path,frames,label`` CSV: ``(clip [3, T, S, S], label)``.

    The clip is the ``seq`` frames in the middle of the video (clamped to the last frame in a
    shorter one), centre crop of side ``test_crop`` x short side, resized to ``img_dim``,
    ImageNet-normalised; no randomness. For cheap, bounded-memory monitoring during pretraining
    (one clip per video, not all windows).
    """

    def __init__(self, csv_file, seq: int = 16, img_dim: int = 112, *, test_crop: float = 0.875):
        if seq < 1 or img_dim < 1:
            raise ValueError(f"seq={seq}, img_dim={img_dim}: both must be >= 1")
        self.seq, self.img_dim, self.test_crop = seq, img_dim, test_crop
        self.videos = read_csv(csv_file, require_labels=True)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        video = self.videos[i]
        start = max(video.frames - self.seq, 0) // 2
        indices = [min(start + t, video.frames - 1) for t in range(self.seq)]
        width, height = frame_size(video.path)
        [(box, _)] = view_boxes(width, height, "center", self.test_crop)
        frames = read_frames(video.path, indices, decode_size([box], self.img_dim))  # [T, H, W, 3] uint8
        x = crop_resize(frames, box, self.img_dim).to(torch.float32).div_(255)  # [T, 3, S, S]
        return normalize(x).transpose(0, 1).contiguous(), video.label  # [3, T, S, S]
