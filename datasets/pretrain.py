"""Pretraining samples (docs/method.md §1): adjacent clips a, b and a global clip g of one video.

Output of ``PretrainDataset[i]``: float ``[sample + 1, 3, seq, img_dim, img_dim]`` = clips
(a, b, g) x (C, T, H, W), ImageNet-normalised. Randomness: rate and start per video; crop box
and flip per clip; gray and colour jitter per frame.
"""

import warnings
from typing import Sequence

import torch
from torch.utils.data import Dataset

from datasets.frames import decode_size, iter_frames
from datasets.index import DataError, read_csv
from datasets.transforms import pixel_box, random_augment_frames, resize_crops, sample_box


def sample_indices(frames: int, seq: int, sample: int, rate: float) -> tuple[list[int], float, int]:
    """Frame indices of one pretraining sample: ``(indices, r, start)``.

    ``r ~ U[1, min(rate, frames / (sample * seq))]``, ``start ~ randint(0, int(frames -
    r * sample * seq))`` inclusive, ``indices[k] = min(round(start + r * k), frames - 1)`` for
    ``k < sample * seq``. Needs ``frames > sample * seq``.
    """
    length = sample * seq
    high = min(rate, frames / length)
    r = 1 + (high - 1) * torch.rand(()).item()
    start = int(torch.randint(0, int(frames - r * length) + 1, ()).item())
    return [min(round(start + r * k), frames - 1) for k in range(length)], r, start


class PretrainDataset(Dataset):
    """Multi-clip, variable-rate pretraining samples from a ``path,frames[,label]`` CSV.

    Videos with ``frames <= sample * seq`` are skipped (``self.skipped`` counts them; a warning
    says so once). Clip k < sample holds ``indices[k*seq:(k+1)*seq]``; the global clip g holds
    every ``sample``-th index (every second for 2), spanning all clips at lower frame rate.
    Augmentation: a random resized crop (area ``crop_area``, aspect 3/4-4/3) drawn per clip in
    ``ref_size`` (w, h) coordinates, as if every frame had first been resized to ``ref_size``
    (200x150 in the original), mapped onto the stored frame and cropped + resized to
    ``img_dim`` in one step; horizontal flip per clip (p ``flip_p``); per frame: channel-copy
    gray (p ``gray_p``) and colour jitter ``jitter`` = (brightness, contrast, saturation, hue)
    in random order; ImageNet normalisation. Frames are decoded once each, at reduced JPEG
    scale when all crops taken from them stay at least ``img_dim`` pixels a side. A row may name
    a frame folder or a video file (``datasets.videos``: the same frames, same crops).
    A missing or broken frame raises ``FrameDecodeError`` (its ``.path`` names the file; for a
    video file, ``VideoDecodeError`` with ``.index`` the frame).
    """

    def __init__(self, csv_file, seq: int = 16, sample: int = 2, rate: float = 3.0, img_dim: int = 112,
                 *, ref_size: tuple[int, int] = (200, 150), crop_area: tuple[float, float] = (0.5, 1.0),
                 jitter: Sequence[float] = (0.5, 0.5, 0.5, 0.25), gray_p: float = 0.5, flip_p: float = 0.5):
        if seq < 1 or sample < 1 or img_dim < 1:
            raise ValueError(f"seq={seq}, sample={sample}, img_dim={img_dim}: all must be >= 1")
        if rate < 1:
            raise ValueError(f"rate={rate}: the maximum frame step must be >= 1")
        self.csv_file, self.seq, self.sample, self.rate, self.img_dim = csv_file, seq, sample, rate, img_dim
        self.ref_size, self.crop_area, self.jitter = ref_size, crop_area, tuple(jitter)
        self.gray_p, self.flip_p = gray_p, flip_p
        records = read_csv(csv_file)
        self.videos = [record for record in records if record.frames > sample * seq]
        self.skipped = len(records) - len(self.videos)
        if not self.videos:
            raise DataError(f"{csv_file}: all {len(records)} videos have <= {sample * seq} frames "
                            "(sample x seq); lower --seq or --sample, or use longer videos")
        if self.skipped:
            warnings.warn(f"{csv_file}: skipped {self.skipped} of {len(records)} videos with "
                          f"<= {sample * seq} frames (sample x seq)", stacklevel=2)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> torch.Tensor:
        video = self.videos[i]
        seq, sample, size = self.seq, self.sample, self.img_dim
        indices, _, _ = sample_indices(video.frames, seq, sample, self.rate)
        boxes = [sample_box(*self.ref_size, self.crop_area) for _ in range(sample + 1)]
        crops = []  # per clip, uint8 [T, h, w, 3]: each frame's crop is cut as soon as it is decoded
        for position, frame in enumerate(iter_frames(video.path, indices, decode_size(boxes, size))):
            if not crops:
                cuts = [pixel_box(box, frame.shape[1], frame.shape[0]) for box in boxes]
                crops = [torch.empty(seq, rows.stop - rows.start, columns.stop - columns.start, 3, dtype=torch.uint8)
                         for rows, columns in cuts]
            clip, t = divmod(position, seq)  # clips a, b, ...: consecutive runs of seq frames
            crops[clip][t] = frame[cuts[clip]]
            if position % sample == 0:  # clip g: every sample-th frame
                crops[sample][position // sample] = frame[cuts[sample]]
        flips = (torch.rand(sample + 1) < self.flip_p).tolist()
        clips = torch.cat([resize_crops(crop, size).flip(-1) if flip else resize_crops(crop, size)
                           for crop, flip in zip(crops, flips)])  # [K*T, 3, S, S] uint8
        out = torch.empty(sample + 1, 3, seq, size, size)  # [K, 3, T, S, S]
        random_augment_frames(clips, self.jitter, self.gray_p, out.transpose(1, 2))
        return out
