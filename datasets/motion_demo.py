"""A synthetic motion benchmark: classes that differ only in the direction of motion.

Every video shows 1-2 shapes (disc, square or diamond; random colour and size) translating at
constant velocity over a random static textured background, wrapping around the frame (a
torus). The class is the direction of the velocity; the speed, the shapes, their colours,
sizes and start positions and the background are drawn per video, from the same distributions
for every class. Hence:

* no single frame tells the class: start positions are uniform on the torus, so the frame at
  any time has the same distribution in every class (only how frames follow each other differs);
* classes come in time-reversal pairs: class ``2p`` moves along angle ``pi * p / (K / 2)`` and
  class ``2p + 1`` the opposite way, and a video played backwards is a video of its pair class
  (start at the end position, velocity negated), so a feature blind to the arrow of time cannot
  separate a pair.

With the default 8 classes the directions are right/left, down-right/up-left, down/up,
down-left/up-right. Note that a horizontal flip (a pretraining augmentation) maps the direction
(dx, dy) to (-dx, dy): it keeps down/up, swaps right and left, and swaps the two diagonals.

Layout written by :func:`make_motion_data` (paths in the CSVs relative to ``out_dir``)::

    out_dir/frames/{pretrain,train,test}/<class>/<video>/image_00001.jpg ...
    out_dir/pretrain.csv  path,frames          (unlabelled videos, disjoint from train/test)
    out_dir/train.csv     path,frames,label    (balanced over the classes)
    out_dir/test.csv      path,frames,label
    out_dir/classes.txt   class names in label order

Deterministic given the seed: every video is drawn from its own generator seeded by
``(seed, split, index)``, so a video does not depend on how many others are written, nor on how
many processes write them (``workers``: the same bytes for any number). (The
``shared_appearance`` control draws every video's appearance from one more generator, seeded by
``(seed, 2**21)``, and marks its folder with a file ``SHARED_APPEARANCE``.)
"""
from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.index import VideoRecord, frame_name, write_csv
from engine.files import atomic_dir

SHAPES = ("disc", "square", "diamond")
SPLITS = ("pretrain", "train", "test")
_COMPASS = {(1, 0): "right", (-1, 0): "left", (0, 1): "down", (0, -1): "up",
            (1, 1): "down_right", (-1, -1): "up_left", (-1, 1): "down_left", (1, -1): "up_right"}


def class_directions(classes: int = 8) -> np.ndarray:
    """Unit velocity directions ``[classes, 2]`` (dx, dy; y points down): class ``2p + 1`` is the
    reverse of class ``2p``; pair ``p`` moves along angle ``pi * p / (classes / 2)``."""
    if classes < 2 or classes % 2:
        raise ValueError(f"classes={classes}: need an even number >= 2 (time-reversal pairs)")
    pairs = classes // 2
    angles = np.repeat(np.pi * np.arange(pairs) / pairs, 2) + np.tile([0.0, np.pi], pairs)  # [K]
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def class_names(classes: int = 8) -> list[str]:
    """``right``, ``left``, ... for compass directions, else ``angle_<degrees>``."""
    names = []
    for dx, dy in class_directions(classes):
        key = (int(round(dx)) if abs(dx) > 1e-6 else 0, int(round(dy)) if abs(dy) > 1e-6 else 0)
        compass = abs(abs(dx) - abs(dy)) < 1e-6 or min(abs(dx), abs(dy)) < 1e-6
        names.append(_COMPASS[key] if compass else f"angle_{math.degrees(math.atan2(dy, dx)) % 360:05.1f}")
    return names


@dataclass(frozen=True)
class Shape:
    """One moving shape: kind, centre at frame 0 (x, y in pixels), velocity (pixels/frame),
    half-size (pixels) and RGB colour (0-255)."""

    kind: str
    x: float
    y: float
    vx: float
    vy: float
    radius: float
    colour: tuple[float, float, float]


@dataclass(frozen=True)
class MotionVideo:
    """Everything that determines one video: ``background`` float32 ``[size, size, 3]``, the
    shapes, the number of frames and the sensor-noise seed (None: no noise)."""

    background: np.ndarray
    shapes: tuple[Shape, ...]
    frames: int
    noise_seed: int | None = None

    def reversed(self) -> MotionVideo:
        """The same scene played backwards: each shape starts where it ended, velocity negated.
        Rendered without noise it equals ``render(self)[::-1]`` up to float rounding."""
        size = self.background.shape[0]
        last = self.frames - 1
        shapes = tuple(replace(s, x=(s.x + s.vx * last) % size, y=(s.y + s.vy * last) % size, vx=-s.vx, vy=-s.vy)
                       for s in self.shapes)
        return replace(self, shapes=shapes)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random static texture: a smooth colour field (bilinear 4x4 grid) plus blotches and grain."""
    corners = rng.uniform(40, 215, (4, 4, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(corners).resize((size, size), Image.BILINEAR), np.float32)
    cells = max(size // 6, 2)
    blotches = rng.standard_normal((cells, cells, 1)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(blotches[..., 0]).resize((size, size), Image.BICUBIC), np.float32)
    grain = rng.standard_normal((size, size, 1)).astype(np.float32)
    return (smooth + rng.uniform(8, 25) * blotches[..., None] + rng.uniform(3, 10) * grain).clip(0, 255)


def draw_video(rng: np.random.Generator, label: int, *, size: int = 48, frames: int = 40,
               classes: int = 8, noise: bool = True, look: np.random.Generator | None = None) -> MotionVideo:
    """Draw the parameters of one video of class ``label`` (see the module docstring).

    Per video: background texture; 1 or 2 shapes, each with its own kind, colour, half-size in
    [size/12, size/6], uniform start on the torus and speed in [0.75, 1.75] x size/48 pixels per
    frame along the class direction (shapes of a video share the direction, not the speed).
    ``look`` draws the appearance (background, number of shapes, kinds, sizes, colours) and ``rng``
    the rest (default: ``rng`` draws all); a ``look`` seeded alike for every video gives videos that
    look the same and differ only in where their shapes start and how they move.
    """
    look = rng if look is None else look
    direction = class_directions(classes)[label]
    background = _background(look, size)
    shapes = []
    for _ in range(int(look.integers(1, 3))):
        speed = rng.uniform(0.75, 1.75) * size / 48
        shapes.append(Shape(kind=SHAPES[int(look.integers(len(SHAPES)))],
                            x=float(rng.uniform(0, size)), y=float(rng.uniform(0, size)),
                            vx=float(speed * direction[0]), vy=float(speed * direction[1]),
                            radius=float(look.uniform(size / 12, size / 6)),
                            colour=tuple(float(c) for c in look.uniform(0, 255, 3))))
    noise_seed = int(rng.integers(2 ** 31)) if noise else None
    return MotionVideo(background, tuple(shapes), frames, noise_seed)


def render(video: MotionVideo) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: shapes antialiased over the background (torus offsets),
    plus per-pixel Gaussian sensor noise (sigma 3) when ``noise_seed`` is set."""
    size = video.background.shape[0]
    t = np.arange(video.frames, dtype=np.float64)[:, None, None]  # [F, 1, 1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres [H, W]
    out = np.repeat(video.background[None].astype(np.float64), video.frames, axis=0)  # [F, H, W, 3]
    for s in video.shapes:
        # offset of every pixel to the shape centre, wrapped into [-size/2, size/2): [F, H, W]
        dx = (xx - (s.x + s.vx * t) + size / 2) % size - size / 2
        dy = (yy - (s.y + s.vy * t) + size / 2) % size - size / 2
        if s.kind == "disc":
            distance = np.hypot(dx, dy)
        elif s.kind == "square":
            distance = np.maximum(abs(dx), abs(dy))
        else:  # diamond
            distance = (abs(dx) + abs(dy)) / math.sqrt(2)
        alpha = np.clip(s.radius - distance + 0.5, 0.0, 1.0)[..., None]  # [F, H, W, 1], 1-pixel antialiasing
        out = out * (1 - alpha) + alpha * np.asarray(s.colour)
    if video.noise_seed is not None:
        out += 3.0 * np.random.default_rng(video.noise_seed).standard_normal(out.shape)
    return out.clip(0, 255).round().astype(np.uint8)


def video_seed(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of video ``index`` of ``split``: depends on nothing else."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _labels(count: int, classes: int, split: str, seed: int) -> list[int]:
    """Labels of ``count`` videos, as balanced as possible (the first ``count % classes`` classes
    get one video more), in a seeded random order."""
    labels = [i % classes for i in range(count)]
    order = np.random.default_rng([seed, SPLITS.index(split), 1 << 20]).permutation(count)
    return [labels[i] for i in order]


def _write_video(task: tuple) -> None:
    """Draw, render and write one video's frames (a task of :func:`make_motion_data`, run in any process)."""
    folder, seed, split, index, label, size, frames, classes, quality, shared_appearance = task
    look = np.random.default_rng([seed, 1 << 21]) if shared_appearance else None
    video = draw_video(video_seed(seed, split, index), label, size=size, frames=frames, classes=classes, look=look)
    folder.mkdir(parents=True)
    for t, image in enumerate(render(video)):
        Image.fromarray(image).save(folder / frame_name(t), quality=quality)


def make_motion_data(out_dir, *, seed: int = 0, size: int = 48, frames: int = 40, n_pretrain: int = 320,
                     n_train: int = 240, n_test: int = 80, classes: int = 8, quality: int = 90,
                     shared_appearance: bool = False, workers: int = 1) -> Path:
    """Write the motion benchmark to ``out_dir`` (layout in the module docstring); return its path.

    Pretraining videos have labels too (balanced), but they are not written to ``pretrain.csv``.
    ``shared_appearance``: every video has the same background and shapes (a control, not the
    benchmark: appearance then cannot tell one video from another, only positions and motion can).
    ``workers``: processes that draw and write the videos (1: this process alone); each video is
    seeded on its own, so the files are the same bytes for any number of workers. The processes are
    started fresh (``spawn``), not forked, so a caller's threads (torch's, say) are not copied.
    Built in a temporary folder renamed at the end; nothing is done if ``out_dir`` exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        return out_dir
    class_directions(classes)  # validates classes
    if size < 8 or frames < 2 or min(n_pretrain, n_train, n_test) < 0 or n_train + n_test + n_pretrain == 0:
        raise ValueError(f"size={size}, frames={frames}, n_pretrain/train/test={n_pretrain}/{n_train}/{n_test}: "
                         "need size >= 8, frames >= 2 and non-negative counts, not all zero")
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1 process")
    names = class_names(classes)
    with atomic_dir(out_dir) as tmp:
        records: dict[str, list[VideoRecord]] = {}
        tasks = []
        for split, count in zip(SPLITS, (n_pretrain, n_train, n_test)):
            records[split] = []
            for index, label in enumerate(_labels(count, classes, split, seed)):
                folder = tmp / "frames" / split / names[label] / f"{split}_{index:05d}"
                tasks.append((folder, seed, split, index, label, size, frames, classes, quality, shared_appearance))
                records[split].append(VideoRecord(folder, frames, label))
        if workers == 1:
            for task in tasks:
                _write_video(task)
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                # chunks of a few videos: little overhead, and the last ones still spread over the processes
                list(pool.map(_write_video, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
        write_csv(tmp / "pretrain.csv", [VideoRecord(r.path, r.frames) for r in records["pretrain"]],
                  relative_to=tmp)
        write_csv(tmp / "train.csv", records["train"], relative_to=tmp)
        write_csv(tmp / "test.csv", records["test"], relative_to=tmp)
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
        if shared_appearance:  # a control: say so on disk
            (tmp / "SHARED_APPEARANCE").write_text("every video has the same background and shapes (a control, "
                                                   "not the benchmark)\n", encoding="utf-8")
    return out_dir
