"""datasets.videos: frames by index equal a sequential decode and the extracted frames; sizes,
counting, and every bad-input path (unreadable, truncated, too short, irregular timestamps)."""

import struct

import av
import numpy as np
import pytest
import torch

from datasets import frames as frames_module
from datasets import videos
from datasets.frames import FrameDecodeError
from datasets.videos import VideoDecodeError, VideoReader, count_frames, iter_frames, number_packets, read_frames
from scripts.extract_frames import extract_video
from tests.synthetic_video import audio_only, encode, sequential_decode, textured_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """95 textured 64x48 frames, H.264 with B-frames, a keyframe every 30 frames."""
    return encode(tmp_path_factory.mktemp("v") / "clip.mp4", textured_frames(95))


def _count_calls(monkeypatch, name):
    calls = []
    original = getattr(VideoReader, name)

    def counted(self, *args):
        calls.append(args)
        return original(self, *args)
    monkeypatch.setattr(VideoReader, name, counted)
    return calls


def test_random_index_sets_equal_a_sequential_decode(video, monkeypatch):
    reference = sequential_decode(video)
    assert len(reference) == 95
    with VideoReader(video) as reader:
        assert reader.keys == [0, 30, 60, 90] and reader.frames == 95
        assert reader.stream.codec_context.thread_count == 1
    seeks = _count_calls(monkeypatch, "_seek")
    rng = np.random.default_rng(0)
    for trial in range(40):
        indices = rng.integers(0, 95, rng.integers(1, 20)).tolist()
        if trial % 2:
            indices.sort()  # the datasets' usual order; the other half: any order, repeats
        out = read_frames(video, indices)
        assert out.shape == (len(indices), 48, 64, 3) and out.dtype == torch.uint8
        for k, index in enumerate(indices):
            assert np.array_equal(out[k].numpy(), reference[index]), (trial, indices, k)
    assert len(seeks) > 40  # seeks happened, landing between keyframes


@pytest.mark.parametrize("name, codec, options", [
    ("clip.avi", "mpeg4", {"bf": "2"}),  # UCF-101 and HMDB-51 are MPEG-4 Part 2 AVIs
    ("clip.mkv", "libx264", {}),  # no frame count in the header, no dts on B-frames
    ("clip.webm", "libvpx", {}),
])
def test_other_containers_and_codecs_equal_a_sequential_decode(tmp_path, name, codec, options):
    path = encode(tmp_path / name, textured_frames(50), codec=codec, gop=20, options=options)
    reference = sequential_decode(path)
    assert len(reference) == 50 == count_frames(path)
    rng = np.random.default_rng(1)
    for _ in range(10):
        indices = sorted(rng.integers(0, 50, 8).tolist())
        out = read_frames(path, indices)
        assert all(np.array_equal(out[k].numpy(), reference[i]) for k, i in enumerate(indices)), indices


def test_decodes_only_from_the_keyframe_before_and_skips_gaps(video, monkeypatch):
    reference = sequential_decode(video)
    decoded = _count_calls(monkeypatch, "_next")
    seeks = _count_calls(monkeypatch, "_seek")
    read_frames(video, [75, 77])
    assert [key for key, in seeks] == [60]  # the keyframe before 75
    assert len(decoded) <= 18  # at most frames 60..77
    decoded.clear(), seeks.clear()
    assert np.array_equal(read_frames(video, [88])[0].numpy(), reference[88])
    assert len(decoded) < 29 - 8  # of 60..88, the B-frames no frame references were not decoded
    decoded.clear(), seeks.clear()
    read_frames(video, [2, 3, 64])
    assert [key for key, in seeks] == [0, 60]  # 4..59 skipped by a seek
    decoded.clear(), seeks.clear()
    read_frames(video, [33, 50, 58])
    assert [key for key, in seeks] == [30]  # no keyframe between: decoded forward


def test_frames_match_the_extracted_folder_within_jpeg_tolerance(video, tmp_path):
    folder = tmp_path / "clip"
    assert extract_video(video, folder, quality=90) == 95
    indices = [0, 29, 30, 31, 47, 61, 89, 90, 94]
    from_video = read_frames(video, indices).float()  # [9, H, W, 3]
    extracted = frames_module.read_frames(folder, range(95)).float()  # [95, H, W, 3]
    distance = (from_video[:, None] - extracted[None]).abs().mean(dim=(2, 3, 4))  # [9, 95]
    assert distance.argmin(dim=1).tolist() == indices  # the nearest extracted frame is image_{i+1:05d}.jpg
    assert distance[range(9), indices].max() < 3.5  # JPEG quality 90 on this texture: about 2.5


def test_frames_come_at_full_size_whatever_the_crops_need(video):
    reference = sequential_decode(video)
    for need in [None, (64, 48), (32, 24), (16, 12), (1, 1)]:
        out = read_frames(video, [5, 40], need)
        assert np.array_equal(out.numpy(), np.stack([reference[5], reference[40]])), need
    assert frames_module.frame_size(video) == (64, 48) == videos.frame_size(video)


def test_iter_frames_keeps_frames_only_until_their_last_use(video):
    frames = iter_frames(video, [3, 3, 10, 3])
    first, again, other, last = list(frames)
    assert again is first and last is first and other is not first
    frames = iter_frames(video, [1, 2])
    held = next(frames)
    assert held.shape == (48, 64, 3)


def test_variable_frame_rate_is_read_by_timestamps(tmp_path):
    images = textured_frames(50)
    gaps = [1, 3, 1, 2, 5, 1, 1, 4] * 7
    pts = np.cumsum([0] + gaps[:49]).tolist()
    path = encode(tmp_path / "vfr.mkv", images, pts=pts, gop=12)
    with av.open(str(path)) as container:
        times = [frame.pts for frame in container.decode(video=0)]
    assert len(set(np.diff(times))) > 2  # really irregular: an index from a frame rate would be wrong
    reference = sequential_decode(path)
    indices = [48, 3, 4, 25, 26, 40, 11]
    out = read_frames(path, indices)
    assert all(np.array_equal(out[k].numpy(), reference[i]) for k, i in enumerate(indices))
    assert count_frames(path) == 50


def test_count_frames_ignores_missing_and_lying_headers(tmp_path):
    mkv = encode(tmp_path / "a.mkv", textured_frames(37))
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    assert count_frames(mkv) == 37
    avi = encode(tmp_path / "b.avi", textured_frames(23), codec="mpeg4", gop=10)
    data = bytearray(avi.read_bytes())
    main, stream = data.index(b"avih") + 8, data.index(b"strh") + 8
    struct.pack_into("<I", data, main + 16, 500)  # AVIMAINHEADER.dwTotalFrames
    struct.pack_into("<I", data, stream + 32, 500)  # AVISTREAMHEADER.dwLength
    avi.write_bytes(bytes(data))
    with av.open(str(avi)) as container:
        assert container.streams.video[0].frames == 500  # the header lies
    assert count_frames(avi) == 23 == len(sequential_decode(avi))
    assert np.array_equal(read_frames(avi, [17])[0].numpy(), sequential_decode(avi)[17])


def test_unreadable_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    audio = audio_only(tmp_path / "sound.mkv")
    cases = [(junk, "cannot open it"), (audio, "no video stream"), (tmp_path / "gone.mp4", "cannot open")]
    for path, needle in cases:
        for call in (lambda: read_frames(path, [0]), lambda: count_frames(path), lambda: videos.frame_size(path)):
            with pytest.raises(VideoDecodeError, match=needle) as error:
                call()
            assert isinstance(error.value, FrameDecodeError) and error.value.path == path
            assert error.value.index is None and str(path) in str(error.value)


def test_truncated_files(tmp_path):
    mp4 = encode(tmp_path / "cut.mp4", textured_frames(60))  # index (moov) at the end: gone
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match="cannot open it"):
        read_frames(mp4, [0])
    mkv = encode(tmp_path / "cut.mkv", textured_frames(60))  # headers first: the start stays readable
    reference = sequential_decode(mkv)
    mkv.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    readable = len(sequential_decode(mkv))
    assert 5 < readable < 60
    assert np.array_equal(read_frames(mkv, [2])[0].numpy(), reference[2])
    with pytest.raises(VideoDecodeError) as error:
        read_frames(mkv, [2, 58])
    assert error.value.index == 58 and "frame 58 of video" in str(error.value) and str(mkv) in str(error.value)
    assert count_frames(mkv) == readable


def test_video_shorter_than_asked(video):
    with pytest.raises(VideoDecodeError, match=r"frame 95 of video .*the video has 95 frames; its CSV row's frame "
                                               "count is wrong: rebuild the CSV with scripts/make_csv.py videos"):
        read_frames(video, [10, 95])


def test_a_dropped_frame_or_a_late_seek_is_detected(video, monkeypatch):
    reference = sequential_decode(video)
    original_seek, seeks = VideoReader._seek, []

    def late_seek(self, key):  # a container whose seek lands one GOP too late
        seeks.append(key)
        original_seek(self, min(key + 30, 90) if key else 0)
        self._base = key
    monkeypatch.setattr(VideoReader, "_seek", late_seek)
    assert np.array_equal(read_frames(video, [40])[0].numpy(), reference[40])
    assert seeks == [30, 0]  # landed on 60, retried from the start
    monkeypatch.setattr(VideoReader, "_seek", original_seek)
    original_next = VideoReader._next

    def dropping_next(self, target):  # a decoder that loses frame 40
        frame, index = original_next(self, target)
        return original_next(self, target) if index == 40 else (frame, index)
    monkeypatch.setattr(VideoReader, "_next", dropping_next)
    with pytest.raises(VideoDecodeError, match="frame 40 of video .*decoding gives frame 41 where frame 40"):
        read_frames(video, [38, 40])
    with pytest.raises(VideoDecodeError, match="frame 40 of video .*decoded timestamps do not follow"):
        count_frames(video)

    def ending_next(self, target):  # a decoder that gives nothing for the last packets
        frame, index = original_next(self, target)
        return (None, None) if index is not None and index >= 90 else (frame, index)
    monkeypatch.setattr(VideoReader, "_next", ending_next)
    assert count_frames(video) == 90  # what a sequential decode (extract_frames.py) would write
    with pytest.raises(VideoDecodeError, match="frame 92 of video .*the stream ends before any frame from the "
                                               "keyframe at frame 90 on"):
        read_frames(video, [92])
    with pytest.raises(VideoDecodeError, match="frame 91 of video .*the stream ends after frame 89"):
        read_frames(video, [89, 91])  # no seek: decoding on from frame 89


def test_numbering_and_unknown_timestamps(video, monkeypatch):
    # decode order (B-frames after the frame they precede) -> presentation order
    assert number_packets([(0, True), (3, False), (1, False), (2, False), (6, True), (4, False)]) == (
        [0, 1, 2, 3, 4, 6], [0, 5])
    with pytest.raises(ValueError, match="two packets have timestamp 3"):
        number_packets([(0, True), (3, False), (3, False)])
    original = VideoReader._number_packets

    def forgetful(self):  # a decoded frame whose timestamp no packet has
        original(self)
        del self.index[self.pts[40]]
    monkeypatch.setattr(VideoReader, "_number_packets", forgetful)
    with pytest.raises(VideoDecodeError, match=r"frame 45 of video .*timestamp \d+, which no packet has"):
        read_frames(video, [45])
