"""datasets.clips: sliding test windows, views, train clips, short videos, label checks."""

import pytest
import torch
from PIL import Image

from datasets import ClipDataset, DataError, denormalize
from datasets.clips import VideoClips, window_starts
from datasets.index import frame_name
from scripts.extract_frames import extract_video
from tests.synthetic_video import encode, grey_frames, textured_frames


def _csv(tmp_path, videos):
    """Videos of (frames, label); frame i is a solid grey of level 10 + 4 i."""
    rows = ""
    for n, (frames, label) in enumerate(videos):
        folder = tmp_path / f"v{n}"
        folder.mkdir()
        for i in range(frames):
            Image.new("RGB", (40, 30), (10 + 4 * i,) * 3).save(folder / frame_name(i), quality=95)
        rows += f"v{n},{frames},{label}\n"
    (tmp_path / "c.csv").write_text(rows)
    return tmp_path / "c.csv"


def _frame_indices(clip):
    """Frame index of every frame of a normalised clip [3, T, H, W] of solid-grey frames."""
    return ((denormalize(clip).mean(dim=(0, 2, 3)) * 255 - 10) / 4).round().long().tolist()


@pytest.mark.parametrize("frames, span", [(5, 16), (16, 16), (17, 16), (40, 16), (100, 31), (301, 16)])
def test_window_starts_cover_with_half_overlap(frames, span):
    starts = window_starts(frames, span)
    if frames <= span:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] == frames - span
    assert all(0 < b - a <= span / 2 for a, b in zip(starts, starts[1:]))
    # fewest windows: one fewer could not keep every gap within span / 2
    assert (len(starts) - 2) * span / 2 < frames - span


@pytest.mark.parametrize("views, count", [("center", 1), ("five", 5), ("ten", 10)])
def test_test_mode_windows_times_views(tmp_path, views, count):
    dataset = ClipDataset(_csv(tmp_path, [(20, 1)]), "test", seq=4, img_dim=8, stride=2, views=views, lazy=True)
    video, label = dataset[0]
    assert isinstance(video, VideoClips)
    clips = video.tensor()
    windows = window_starts(20, 7)  # span (4 - 1) * 2 + 1
    assert clips.shape == (len(windows) * count, 3, 4, 8, 8) and label == 1
    for w, start in enumerate(windows):
        for v in range(count):
            assert _frame_indices(clips[w * count + v]) == [start, start + 2, start + 4, start + 6]
    torch.testing.assert_close(dataset[0][0].tensor(), clips)  # deterministic
    eager, eager_label = ClipDataset(tmp_path / "c.csv", "test", seq=4, img_dim=8, stride=2, views=views)[0]
    assert isinstance(eager, torch.Tensor) and eager_label == 1  # the default: the tensor itself
    torch.testing.assert_close(eager, clips, rtol=0, atol=0)
    assert len(video) == len(clips)
    torch.testing.assert_close(torch.cat(list(video.split(3))), clips)  # chunks of 3 clips give the same
    assert [len(part) for part in video.split(3)] == [3] * (len(clips) // 3) + ([len(clips) % 3] if len(clips) % 3 else [])
    if views == "ten":
        torch.testing.assert_close(clips[5:10], clips[0:5].flip(-1))


def test_short_video_repeats_its_last_frame(tmp_path):
    dataset = ClipDataset(_csv(tmp_path, [(3, 0)]), "test", seq=5, img_dim=8)
    clips = dataset[0][0]
    assert clips.shape == (1, 3, 5, 8, 8) and _frame_indices(clips[0]) == [0, 1, 2, 2, 2]
    train = ClipDataset(tmp_path / "c.csv", "train", seq=5, img_dim=8, jitter_p=0.0)
    assert _frame_indices(train[0][0]) == [0, 1, 2, 2, 2]


def test_train_mode_random_consecutive_clip(tmp_path):
    torch.manual_seed(0)
    dataset = ClipDataset(_csv(tmp_path, [(30, 2), (30, 0)]), "train", seq=4, img_dim=8, stride=3, jitter_p=0.0)
    starts = set()
    for _ in range(20):
        clip, label = dataset[0]
        assert clip.shape == (3, 4, 8, 8) and label == 2
        indices = _frame_indices(clip)
        assert [b - a for a, b in zip(indices, indices[1:])] == [3, 3, 3] and 0 <= indices[0] <= 30 - 10
        starts.add(indices[0])
    assert len(starts) > 5
    assert dataset.num_classes == 3


def test_train_augmentation_is_one_draw_per_clip(tmp_path):
    torch.manual_seed(1)
    folder = tmp_path / "still"
    folder.mkdir()
    still = Image.radial_gradient("L").resize((40, 30)).convert("RGB")
    still.paste((200, 60, 30), (0, 0, 20, 15))
    for i in range(12):
        still.save(folder / frame_name(i), quality=95)
    (tmp_path / "s.csv").write_text("still,12,0\n")
    dataset = ClipDataset(tmp_path / "s.csv", "train", seq=4, img_dim=8, jitter_p=1.0)
    first, _ = dataset[0]
    assert torch.equal(first, first[:, :1].expand_as(first))  # same crop, flip, jitter on all frames
    assert not torch.allclose(dataset[0][0], first)  # but a new draw per clip


def test_errors(tmp_path):
    csv_file = _csv(tmp_path, [(5, 4)])
    with pytest.raises(DataError, match="label 4 out of range"):
        ClipDataset(csv_file, "train", num_classes=4)
    with pytest.raises(ValueError, match="mode"):
        ClipDataset(csv_file, "val")
    with pytest.raises(ValueError, match="views"):
        ClipDataset(csv_file, "test", views="two")
    (tmp_path / "p.csv").write_text("v0,5\n")
    with pytest.raises(DataError, match="expected 3 columns"):
        ClipDataset(tmp_path / "p.csv", "test")


def test_video_rows_give_the_clips_of_their_frame_folders(tmp_path):
    video = encode(tmp_path / "videos" / "clip.mkv", textured_frames(30, size=(64, 48)))
    extract_video(video, tmp_path / "frames" / "clip", quality=95)
    (tmp_path / "v.csv").write_text("videos/clip.mkv,30,1\n")
    (tmp_path / "f.csv").write_text("frames/clip,30,1\n")
    for mode, kwargs in (("test", {"views": "five", "stride": 2}), ("train", {})):
        out = {}
        for name in ("v", "f"):
            torch.manual_seed(3)
            clips, label = ClipDataset(tmp_path / f"{name}.csv", mode, seq=4, img_dim=16, **kwargs)[0]
            out[name] = denormalize(clips.transpose(-4, -3), channel_dim=-3)
            assert label == 1
        assert out["v"].shape == out["f"].shape == ((len(window_starts(30, 7)) * 5, 4, 3, 16, 16) if mode == "test"
                                                    else (4, 3, 16, 16))
        assert (out["v"] - out["f"]).abs().mean() < 0.02, mode  # JPEG rounding only
    torch.manual_seed(4)
    other = denormalize(ClipDataset(tmp_path / "v.csv", "train", seq=4, img_dim=16)[0][0].transpose(0, 1), 1)
    assert (other - out["v"]).abs().mean() > 0.05  # another draw: another clip


def test_a_csv_mixing_videos_and_folders(tmp_path):
    csv_file = _csv(tmp_path, [(10, 0)])  # folder v0: solid greys 10 + 4 i
    encode(tmp_path / "g.mp4", grey_frames(10, size=(40, 30)), options={"qp": "0"})  # lossless
    (tmp_path / "c.csv").write_text(csv_file.read_text() + "g.mp4,10,1\n")
    dataset = ClipDataset(tmp_path / "c.csv", "test", seq=4, img_dim=8, stride=3)
    for i in (0, 1):
        clips, label = dataset[i]
        assert label == i and clips.shape == (1, 3, 4, 8, 8)
        assert _frame_indices(clips[0]) == [0, 3, 6, 9]


def _reference_test_clips(dataset, i):
    """The test clips as the dataset made them before VideoClips: all needed frames decoded, each
    window cropped and resized as a whole, stacked in float."""
    from datasets.frames import decode_size, frame_size, read_frames
    from datasets.transforms import crop_resize, normalize, view_boxes
    video = dataset.videos[i]
    width, height = frame_size(video.path)
    views = view_boxes(width, height, dataset.views, dataset.test_crop)
    span = (dataset.seq - 1) * dataset.stride + 1
    windows = [dataset._indices(start, video.frames) for start in window_starts(video.frames, span)]
    frames = read_frames(video.path, list(range(video.frames)), decode_size([b for b, _ in views], dataset.img_dim))
    clips = []
    for window in windows:
        for box, flip in views:
            crop = crop_resize(frames[window], box, dataset.img_dim)
            clips.append(crop.flip(-1) if flip else crop)
    x = torch.stack(clips).float().div(255)
    return normalize(x).transpose(1, 2).contiguous()


def test_video_clips_equal_whole_window_crops_and_join(tmp_path):
    folder = tmp_path / "noise"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(23):
        pixels = torch.randint(0, 256, (30, 40, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / frame_name(i), quality=95)
    (tmp_path / "n.csv").write_text("noise,23,0\nnoise,9,1\n")
    dataset = ClipDataset(tmp_path / "n.csv", "test", seq=6, img_dim=12, views="ten", lazy=True)
    for i in range(2):
        torch.testing.assert_close(dataset[i][0].tensor(), _reference_test_clips(dataset, i), rtol=0, atol=0)
    (a, _), (b, _) = dataset[0], dataset[1]
    joined = VideoClips.cat([a, b])
    assert len(joined) == len(a) + len(b)
    torch.testing.assert_close(joined.tensor(), torch.cat([a.tensor(), b.tensor()]), rtol=0, atol=0)
    assert a.crops.dtype == torch.uint8 and a.crops.shape == (23, 5, 3, 12, 12)  # each frame once, 5 boxes


def test_video_clips_decode_only_the_windows_asked_for(tmp_path, monkeypatch):
    import datasets.clips as clips_module
    decoded = []
    real = clips_module.iter_frames

    def counting(folder, indices, need=None):
        for frame in real(folder, indices, need):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(clips_module, "iter_frames", counting)
    dataset = ClipDataset(_csv(tmp_path, [(40, 0)]), "test", seq=4, img_dim=8, lazy=True)
    first = dataset.video_clips(0, max_windows=1)
    assert len(decoded) == 4 and len(first) == 1
    assert _frame_indices(first.tensor()[0]) == [0, 1, 2, 3]
    decoded.clear()
    assert len(dataset[0][0]) == len(window_starts(40, 4)) and len(decoded) == 40  # every frame once
