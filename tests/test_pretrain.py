"""datasets.pretrain: index sampling (docs/method.md §1) and the pretraining sample."""

import pytest
import torch
from PIL import Image

from datasets import DataError, FrameDecodeError, PretrainDataset, VideoDecodeError, denormalize
from datasets.index import frame_name
from datasets.pretrain import sample_indices
from engine.sampling import SeededSamples
from scripts.extract_frames import extract_video
from tests.synthetic_video import encode, grey_frames, textured_frames

NO_AUGMENT = dict(crop_area=(1.0, 1.0), jitter=(0, 0, 0, 0), gray_p=0.0, flip_p=0.0)


def _video(folder, frames, size=(40, 30), pattern=False):
    """Frame i is a solid grey of level 10 + 4 i (with ``pattern``: one still image, a red left
    half and a horizontal grey ramp on the right)."""
    folder.mkdir(parents=True)
    still = Image.linear_gradient("L").resize(size).convert("RGB")
    still.paste((250, 40, 40), (0, 0, size[0] // 2, size[1]))
    for i in range(frames):
        image = still if pattern else Image.new("RGB", size, (10 + 4 * i,) * 3)
        image.save(folder / frame_name(i), quality=95)
    return folder


def _csv(tmp_path, lengths, **kwargs):
    rows = "".join(f"{_video(tmp_path / f'v{n}', f, **kwargs)},{f}\n" for n, f in enumerate(lengths))
    (tmp_path / "p.csv").write_text(rows)
    return tmp_path / "p.csv"


def _frame_indices(clip):
    """Frame index of every frame of a normalised clip [3, T, H, W] of solid-grey frames."""
    levels = denormalize(clip).mean(dim=(0, 2, 3)) * 255
    return ((levels - 10) / 4).round().long().tolist()


@pytest.mark.parametrize("frames, rate", [(33, 3.0), (50, 3.0), (200, 3.0), (200, 1.5), (64, 1.0)])
def test_sample_indices_follow_the_spec(frames, rate):
    torch.manual_seed(0)
    seq, sample = 8, 2
    for _ in range(200):
        indices, r, start = sample_indices(frames, seq, sample, rate)
        assert 1 <= r <= min(rate, frames / (seq * sample))
        assert 0 <= start <= int(frames - r * seq * sample)
        expected = [min(round(start + r * k), frames - 1) for k in range(seq * sample)]
        assert indices == expected and max(indices) <= frames - 1


def test_rate_and_start_cover_their_ranges():
    torch.manual_seed(1)
    draws = [sample_indices(200, 8, 2, 3.0) for _ in range(400)]
    rates = [r for _, r, _ in draws]
    assert min(rates) < 1.1 and max(rates) > 2.9  # r ~ U[1, 3]
    assert max(start for _, _, start in draws) > 140  # start up to int(200 - 16 r) = 184 at r = 1


def test_clips_a_b_adjacent_and_g_every_second_index(tmp_path):
    torch.manual_seed(2)
    dataset = PretrainDataset(_csv(tmp_path, [60]), seq=8, sample=2, rate=3.0, img_dim=16, **NO_AUGMENT)
    for _ in range(5):
        sample = dataset[0]
        assert sample.shape == (3, 3, 8, 16, 16) and sample.dtype == torch.float32
        a, b, g = (_frame_indices(clip) for clip in sample)
        steps = [y - x for x, y in zip(a + b, (a + b)[1:])]
        assert max(steps) - min(steps) <= 1 and min(steps) >= 1  # one rate r across a and b
        assert g == (a + b)[::2]


def test_short_videos_are_skipped_and_counted(tmp_path):
    with pytest.warns(UserWarning, match="skipped 2 of 4 videos with <= 16 frames"):
        dataset = PretrainDataset(_csv(tmp_path, [16, 17, 5, 40]), seq=8, sample=2, img_dim=8)
    assert dataset.skipped == 2 and len(dataset) == 2
    assert [video.frames for video in dataset.videos] == [17, 40]
    with pytest.raises(DataError, match="all 4 videos have <= 64 frames"):
        PretrainDataset(tmp_path / "p.csv", seq=32, sample=2)


def test_one_crop_per_clip_and_per_frame_jitter(tmp_path):
    torch.manual_seed(3)
    csv_file = _csv(tmp_path, [40], size=(48, 36), pattern=True)
    plain = PretrainDataset(csv_file, seq=4, sample=2, img_dim=16, jitter=(0, 0, 0, 0), gray_p=0.0)
    sample = plain[0]  # [3 clips, 3, T, H, W] of a still video
    assert torch.equal(sample, sample[:, :, :1].expand_as(sample))  # one box and flip per clip
    assert (sample[0] - sample[1]).abs().max() > 0.1 and (sample[1] - sample[2]).abs().max() > 0.1
    jittered = PretrainDataset(csv_file, seq=4, sample=2, img_dim=16)[0]
    per_frame = jittered.mean(dim=(3, 4))  # [3, 3, T] colour of each frame
    assert (per_frame[:, :, 1:] - per_frame[:, :, :1]).abs().amax(dim=1).min() > 0.01


def test_broken_frame_raises_with_its_path(tmp_path):
    csv_file = _csv(tmp_path, [20])
    for i in range(20):
        (tmp_path / "v0" / frame_name(i)).write_bytes(b"garbage")
    with pytest.raises(FrameDecodeError) as error:
        PretrainDataset(csv_file, seq=4, sample=2, img_dim=8)[0]
    assert error.value.path.parent == tmp_path / "v0"


def test_batches_through_a_dataloader(tmp_path):
    torch.manual_seed(4)
    dataset = PretrainDataset(_csv(tmp_path, [30, 35, 40]), seq=4, sample=2, img_dim=12)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch.shape == (3, 3, 3, 4, 12, 12) and torch.isfinite(batch).all()


def _video_and_folder(tmp_path, frames, images=None):
    """An H.264 video of ``images`` (default: ``frames`` solid greys of level 10 + 4 i) and its frame folder."""
    video = encode(tmp_path / "videos" / "clip.mp4", images or grey_frames(frames), options={"qp": "0"})  # lossless
    extract_video(video, tmp_path / "frames" / "clip", quality=95)
    return video, tmp_path / "frames" / "clip"


def test_a_video_row_gives_the_sample_of_its_frame_folder(tmp_path):
    video, folder = _video_and_folder(tmp_path, 40, textured_frames(40))
    (tmp_path / "v.csv").write_text(f"{video},40\n")
    (tmp_path / "f.csv").write_text(f"{folder},40\n")
    samples = {}
    for name in ("v", "f"):
        dataset = PretrainDataset(tmp_path / f"{name}.csv", seq=4, sample=2, img_dim=16)
        for seed in (0, 1):
            torch.manual_seed(seed)
            samples[name, seed] = denormalize(dataset[0].transpose(0, 1))  # full augmentation
    assert samples["v", 0].shape == (3, 3, 4, 16, 16)
    same = (samples["v", 0] - samples["f", 0]).abs().mean()
    assert same < 0.02  # JPEG rounding only: same indices, crops, flips, jitter
    assert (samples["v", 0] - samples["v", 1]).abs().mean() > 5 * same  # another draw differs


def test_a_csv_mixing_videos_and_folders(tmp_path):
    torch.manual_seed(5)
    video, folder = _video_and_folder(tmp_path, 50)
    (tmp_path / "m.csv").write_text(f"videos/clip.mp4,50\n{folder},50\n")  # relative and absolute
    dataset = PretrainDataset(tmp_path / "m.csv", seq=8, sample=2, rate=3.0, img_dim=16, **NO_AUGMENT)
    assert [v.path for v in dataset.videos] == [video, folder]
    for i in (0, 1):
        a, b, g = (_frame_indices(clip) for clip in dataset[i])
        steps = [y - x for x, y in zip(a + b, (a + b)[1:])]
        assert max(steps) - min(steps) <= 1 and min(steps) >= 1 and g == (a + b)[::2]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)))
    assert batch.shape == (2, 3, 3, 8, 16, 16) and torch.isfinite(batch).all()


def test_a_video_shorter_than_its_row_is_replaced_or_stops(tmp_path):
    video, folder = _video_and_folder(tmp_path, 30)
    (tmp_path / "p.csv").write_text(f"{video},300\n{folder},30\n")  # the row says 300 frames
    dataset = PretrainDataset(tmp_path / "p.csv", seq=4, sample=2, rate=1.0, img_dim=8)
    with pytest.raises(VideoDecodeError) as error:
        for seed in range(20):  # some start beyond frame 30
            torch.manual_seed(seed)
            dataset[0]
    assert error.value.path == video and error.value.index >= 30 and str(video) in str(error.value)
    samples = SeededSamples(dataset, seed=0, errors=(FrameDecodeError, OSError))
    replaced = [samples[(epoch, 0)][1] for epoch in range(20)]
    assert max(replaced) == 1  # some draws failed and were replaced by the folder video
    strict = SeededSamples(dataset, seed=0, errors=(FrameDecodeError, OSError), strict=True)
    with pytest.raises(VideoDecodeError):
        for epoch in range(20):
            strict[(epoch, 0)]
