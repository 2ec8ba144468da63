"""datasets/motion_demo.py: layout, determinism, time-reversal pairs, motion-only classes."""

import numpy as np
import pytest
from PIL import Image

from datasets.index import count_frames, frame_name, read_csv
from datasets.motion_demo import (class_directions, class_names, draw_video, make_motion_data, render,
                                  video_seed)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(record):
    return np.stack([np.asarray(Image.open(record.path / frame_name(t)), np.float32) for t in range(record.frames)])


def test_layout_counts_and_balance(tmp_path):
    out = make_motion_data(tmp_path / "m", seed=0, size=24, frames=6, n_pretrain=5, n_train=16, n_test=8)
    assert (out / "classes.txt").read_text().split() == [
        "right", "left", "down_right", "up_left", "down", "up", "down_left", "up_right"]
    pretrain, train = read_csv(out / "pretrain.csv"), read_csv(out / "train.csv", require_labels=True)
    test = read_csv(out / "test.csv", require_labels=True)
    assert (len(pretrain), len(train), len(test)) == (5, 16, 8)
    assert all(r.label is None for r in pretrain)
    assert np.bincount([r.label for r in train]).tolist() == [2] * 8
    assert np.bincount([r.label for r in test]).tolist() == [1] * 8
    paths = [r.path for r in pretrain + train + test]
    assert len(set(paths)) == len(paths)  # pretraining videos are not the labelled ones
    for r in train + test:
        assert r.path.parent.name == class_names()[r.label] and count_frames(r.path) == r.frames == 6
    assert Image.open(train[0].path / frame_name(0)).size == (24, 24)
    assert not (out / "train.csv").read_text().startswith("/")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_deterministic_from_seed_and_no_op_when_present(tmp_path):
    kw = dict(size=16, frames=4, n_pretrain=2, n_train=8, n_test=8)
    first = _files(make_motion_data(tmp_path / "a", seed=3, **kw))
    assert _files(make_motion_data(tmp_path / "b", seed=3, **kw)) == first
    assert _files(make_motion_data(tmp_path / "c", seed=4, **kw)) != first
    (tmp_path / "a" / "train.csv").write_text("kept\n")
    make_motion_data(tmp_path / "a", seed=3, **kw)
    assert (tmp_path / "a" / "train.csv").read_text() == "kept\n"
    # a video depends on (seed, split, index) only, not on how many videos are written
    more = _files(make_motion_data(tmp_path / "d", seed=3, **{**kw, "n_pretrain": 5}))
    assert all(more[k] == v for k, v in first.items() if k.startswith("frames/train"))


def test_the_same_bytes_for_any_number_of_workers(tmp_path):
    kw = dict(size=16, frames=4, n_pretrain=3, n_train=8, n_test=3)
    one = _files(make_motion_data(tmp_path / "one", seed=2, **kw))
    two = _files(make_motion_data(tmp_path / "two", seed=2, workers=2, **kw))
    assert len(one) == 3 + (3 + 8 + 3) * 4 + 1  # three CSVs, the frames, classes.txt
    assert two == one
    shared = dict(kw, shared_appearance=True)
    assert (_files(make_motion_data(tmp_path / "s1", seed=2, **shared))
            == _files(make_motion_data(tmp_path / "s2", seed=2, workers=2, **shared)))
    with pytest.raises(ValueError, match="workers"):
        make_motion_data(tmp_path / "none", workers=0)
    assert not (tmp_path / "none").exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        class_directions(7)
    with pytest.raises(ValueError, match="size"):
        make_motion_data("unused", size=4)


def test_directions_come_in_reversal_pairs():
    d = class_directions(8)
    assert np.allclose(np.linalg.norm(d, axis=1), 1)
    assert np.allclose(d[0::2], -d[1::2])  # class 2p+1 is class 2p backwards
    assert np.allclose(d[0], [1, 0]) and np.allclose(d[4], [0, 1])  # right; down (y points down)
    assert len({tuple(np.round(v, 6)) for v in d}) == 8


@pytest.mark.parametrize("label", range(8))
def test_reversed_video_is_a_video_of_the_pair_class(label):
    video = draw_video(np.random.default_rng(label), label, size=32, frames=12, noise=False)
    backwards = video.reversed()
    frames, reversed_frames = render(video), render(backwards)
    # played backwards, the pixels are those of the reversed scene (rounding: at most 1 grey level)
    assert np.abs(frames[::-1].astype(int) - reversed_frames.astype(int)).max() <= 1
    pair = label ^ 1
    for shape in backwards.shapes:  # the reversed scene moves along the pair class's direction
        v = np.array([shape.vx, shape.vy])
        assert np.allclose(v / np.linalg.norm(v), class_directions(8)[pair])
    assert not np.array_equal(frames[1], frames[0])  # something moves


def _displacement(video, step=2, reach=5):
    """The integer shift (dx, dy) that best maps the changing pixels of frames t -> t+step onto
    those of t+step -> t+2 step, found by exhaustive search: an estimate of the velocity x step."""
    gray = video.mean(-1)
    change = np.abs(gray[step:] - gray[:-step]) > 25  # [F-step, H, W]
    best, best_score = (0, 0), -1
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dx == dy == 0:
                continue
            score = sum((np.roll(change[t], (dy, dx), axis=(0, 1)) & change[t + step]).sum()
                        for t in range(len(change) - step))
            if score > best_score:
                best, best_score = (dx, dy), score
    return np.array(best, float)


def test_motion_tells_the_class_and_single_frames_do_not(tmp_path):
    out = make_motion_data(tmp_path / "m", seed=1, size=32, frames=10, n_pretrain=0, n_train=160, n_test=80)
    train = read_csv(out / "train.csv", require_labels=True)
    test = read_csv(out / "test.csv", require_labels=True)
    directions = class_directions(8)

    # motion: the direction of the estimated displacement gives the class of nearly every video
    hits = [np.argmax(directions @ _displacement(_load(r))) == r.label for r in test]
    assert np.mean(hits) >= 0.9

    # one frame: nearest class mean of per-frame statistics (mean and std of each channel, and a
    # 4x4 grey thumbnail) learnt on the train videos is near chance on the test videos, for a
    # frame taken at the start, in the middle and at the end of each video
    def stats(frame):
        thumb = np.asarray(Image.fromarray(frame.astype(np.uint8)).convert("L").resize((4, 4), Image.BOX), float)
        return np.concatenate([frame.mean((0, 1)), frame.std((0, 1)), thumb.ravel()])

    for t in (0, 5, 9):
        x_train = np.stack([stats(_load(r)[t]) for r in train])
        x_test = np.stack([stats(_load(r)[t]) for r in test])
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
        means = np.stack([x_train[[r.label == c for r in train]].mean(0) for c in range(8)])
        pred = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
        acc = np.mean(pred == np.array([r.label for r in test]))
        assert acc <= 0.25, (t, acc)  # chance is 0.125; 80 test videos give a std of about 0.04


def test_same_frame_distribution_for_every_class():
    """Start positions, sizes, speeds and colours are drawn alike for every class: per class, the
    mean shape position at a fixed frame stays near the frame centre and the sizes match."""
    rows = []
    for label in range(8):
        for i in range(60):
            v = draw_video(video_seed(5, "train", 1000 * label + i), label, size=48, frames=20)
            for s in v.shapes:
                x5, y5 = (s.x + 5 * s.vx) % 48, (s.y + 5 * s.vy) % 48
                rows.append((label, x5, y5, s.radius, np.hypot(s.vx, s.vy)))
    rows = np.array(rows)
    for label in range(8):
        r = rows[rows[:, 0] == label]
        assert abs(r[:, 1].mean() - 24) < 4 and abs(r[:, 2].mean() - 24) < 4  # uniform on [0, 48): std ~1.6
        assert abs(r[:, 3].mean() - 6) < 0.6 and abs(r[:, 4].mean() - 1.25) < 0.1


def test_shared_appearance_leaves_only_positions_and_motion(tmp_path):
    look = lambda: np.random.default_rng([0, 1 << 21])  # noqa: E731 - seeded alike for every video
    videos = [draw_video(video_seed(0, "train", i), label=i, look=look()) for i in range(4)]
    for video in videos[1:]:
        assert np.array_equal(video.background, videos[0].background)
        assert [(s.kind, s.radius, s.colour) for s in video.shapes] == [
            (s.kind, s.radius, s.colour) for s in videos[0].shapes]
        assert video.shapes[0].x != videos[0].shapes[0].x  # where the shapes start is still drawn per video
    for label, video in enumerate(videos):  # each moves along its class's direction
        velocity = np.array([video.shapes[0].vx, video.shapes[0].vy])
        assert np.allclose(velocity / np.linalg.norm(velocity), class_directions()[label])

    def agreement(root):
        """Fraction of pixels of frame 0 that two train videos share (within JPEG and sensor noise)."""
        first, second = read_csv(root / "train.csv", require_labels=True)[:2]
        a, b = _load(first)[0], _load(second)[0]
        return float((np.abs(a - b).max(axis=2) < 20).mean())

    kw = dict(size=48, frames=2, n_pretrain=1, n_train=2, n_test=1)
    shared = make_motion_data(tmp_path / "shared", seed=0, shared_appearance=True, **kw)
    default = make_motion_data(tmp_path / "default", seed=0, **kw)
    assert agreement(shared) > 0.5 and agreement(default) < 0.2
    assert (shared / "SHARED_APPEARANCE").is_file() and not (default / "SHARED_APPEARANCE").exists()
