"""Synthetic labelled frame-folder datasets (``scripts/make_demo_data.py`` is their command line).

The demo: a small synthetic, labelled frame-folder dataset whose classes differ only by motion.

Each video shows shapes drifting across a textured background; the class is the direction
of the drift (left, right, up, down), so a clip played backwards looks like another class:
temporal order matters. Speeds, shapes, colours and backgrounds vary within a class.

Writes ``OUT/frames/<class>/<video>/image_00001.jpg ...``, ``OUT/pretrain.csv``
(``path,frames``, all videos), ``OUT/train.csv`` and ``OUT/test.csv`` (``path,frames,label``,
a quarter of each class for test) and ``OUT/classes.txt`` (class names in label order). CSV
paths are relative to OUT, so the folder can be moved. Deterministic given ``--seed``; built
in a temporary folder renamed at the end; a no-op when OUT already exists.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from datasets.index import VideoRecord, frame_name, write_csv
from engine.files import atomic_dir

CLASSES = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
WIDTH, HEIGHT = 80, 64


def _video(rng: np.random.Generator, direction: tuple[int, int], frames: int) -> np.ndarray:
    """uint8 ``[frames, HEIGHT, WIDTH, 3]``: 1-3 shapes drifting along ``direction`` (wrapping)."""
    t = np.arange(frames, dtype=np.float32).reshape(-1, 1, 1)  # [F, 1, 1]
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)  # [H, W]
    corners = rng.uniform(30, 220, (2, 2, 3)).astype(np.uint8)
    background = np.asarray(Image.fromarray(corners).resize((WIDTH, HEIGHT), Image.BILINEAR), np.float32)
    background += 12 * rng.standard_normal((HEIGHT, WIDTH, 1), dtype=np.float32)  # static texture
    video = np.repeat(background[None], frames, axis=0)  # [F, H, W, 3]
    for _ in range(rng.integers(1, 4)):
        x0, y0 = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        speed, radius = rng.uniform(1.0, 2.5), rng.uniform(5, 11)
        colour, square = rng.uniform(0, 255, 3), rng.random() < 0.5
        # offsets to the shape centre on the torus, so shapes wrap around the frame: [F, H, W]
        dx = (xx - x0 - direction[0] * speed * t + WIDTH / 2) % WIDTH - WIDTH / 2
        dy = (yy - y0 - direction[1] * speed * t + HEIGHT / 2) % HEIGHT - HEIGHT / 2
        inside = np.maximum(abs(dx), abs(dy)) < radius if square else dx ** 2 + dy ** 2 < radius ** 2
        video[inside] = colour
    video += 3 * rng.standard_normal(video.shape, dtype=np.float32)  # sensor noise
    return video.clip(0, 255).astype(np.uint8)


def make_demo_data(out_dir, videos: int = 48, frames: int = 40, seed: int = 0) -> Path:
    """Build the demo dataset in ``out_dir`` (see the module docstring); return its path.

    ``videos`` in all (spread evenly over the classes, at least 2 per class), ``frames`` per
    video. Nothing is done if ``out_dir`` exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        return out_dir
    if videos < 2 * len(CLASSES) or frames < 1:
        raise ValueError(f"videos={videos}, frames={frames}: need >= {2 * len(CLASSES)} videos "
                         "(2 per class) and >= 1 frame")
    with atomic_dir(out_dir) as tmp:
        rng = np.random.default_rng(seed)
        train, test = [], []
        for v in range(videos):
            label = v % len(CLASSES)
            name = list(CLASSES)[label]
            folder = tmp / "frames" / name / f"{name}_{v // len(CLASSES):03d}"
            folder.mkdir(parents=True)
            for t, image in enumerate(_video(rng, CLASSES[name], frames)):
                Image.fromarray(image).save(folder / frame_name(t), quality=90)
            record = VideoRecord(folder, frames, label)
            (test if (v // len(CLASSES)) % 4 == 1 else train).append(record)
        write_csv(tmp / "train.csv", train, relative_to=tmp)
        write_csv(tmp / "test.csv", test, relative_to=tmp)
        write_csv(tmp / "pretrain.csv", [VideoRecord(r.path, r.frames) for r in train + test], relative_to=tmp)
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES), encoding="utf-8")
    return out_dir
