"""Benchmark the pretraining input pipeline against a bare full-size JPEG decode, on one core.

Builds a frame-folder set of synthetic 320x240 JPEG videos (smooth backgrounds, moving shapes,
sensor-like noise) in a temporary folder, then prints:
- raw decode rate: frames/s of ``PIL.Image.open(path).load()`` at full size over all frames;
- dataset rate: frames/s delivered by ``PretrainDataset`` (default config, one thread, set up
  as a DataLoader worker is, but called in this process), counted as the ``sample x seq``
  source frames a sample decodes (32 by default; clip g re-uses them), the way the original
  pipeline's rate is counted; output frames/s (``(sample + 1) x seq`` per sample, 48 by
  default) are printed too;
- their ratio (the issue's target: >= 0.45 on source frames).
Each rate is the best of ``--repeats`` runs, interleaved, to damp noise from other processes.
With ``--loader``, also the steady rate of a real ``DataLoader`` with one worker (batches of 8),
which adds the collation into shared memory and the hand-over to the main process.
With ``--test_loader``, also the peak resident memory (RSS) of a test-mode ``ClipDataset`` loader
worker on one long video (``--long_frames`` 320x240 frames, 1,800 by default as UCF-101's longest)
at the paper's evaluation settings: seq 16, img_dim 112, centre view (the issue's target: < 300 MB),
and how much of it the video adds to what the forked worker held before (torch's libraries).
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from datasets import ClipDataset, PretrainDataset
from datasets.index import VideoRecord, frame_name, read_csv, write_csv
from datasets.loader import keep_freed_memory, loader_kwargs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=6, help="synthetic videos to build (default 6)")
    parser.add_argument("--frames", type=int, default=120, help="frames per video (default 120)")
    parser.add_argument("--samples", type=int, default=30,
                        help="dataset samples per timed run (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each kind; best kept (default 5)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality of the frames, 1-95 (default 85)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--loader", action="store_true",
                        help="also time a DataLoader with one worker (batches of 8, after the first)")
    parser.add_argument("--test_loader", action="store_true",
                        help="also report the peak RSS of a test-mode ClipDataset loader worker on one long video")
    parser.add_argument("--long_frames", type=int, default=1800,
                        help="frames of the long video of --test_loader (default 1800)")
    return parser.parse_args(argv)


def build_frames(root: Path, videos: int, frames: int, quality: int, seed: int) -> Path:
    """Write ``videos`` folders of ``frames`` 320x240 JPEGs under ``root``; return the CSV path."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    records = []
    for v in range(videos):
        folder = root / "frames" / f"video_{v:03d}"
        folder.mkdir(parents=True)
        coarse = rng.uniform(40, 215, (6, 8, 3)).astype(np.uint8)
        background = np.asarray(Image.fromarray(coarse).resize((320, 240), Image.BICUBIC), np.float32)
        shapes = [(rng.uniform(0, 320), rng.uniform(0, 240), rng.uniform(-4, 4), rng.uniform(-3, 3),
                   rng.uniform(15, 50), rng.uniform(0, 255, 3)) for _ in range(4)]
        for t in range(frames):
            image = background.copy()
            for x0, y0, vx, vy, radius, colour in shapes:
                inside = (xx - x0 - vx * t) ** 2 + (yy - y0 - vy * t) ** 2 < radius ** 2
                image[inside] = colour
            image += rng.normal(0, 6, image.shape).astype(np.float32)
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / frame_name(t), quality=quality)
        records.append(VideoRecord(folder, frames))
    csv_file = root / "bench.csv"
    write_csv(csv_file, records)
    return csv_file


def raw_decode_rate(paths: list[Path]) -> float:
    """Frames/s of a bare full-size PIL decode of ``paths``."""
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return len(paths) / (time.perf_counter() - start)


def dataset_rate(dataset: PretrainDataset, samples: int) -> float:
    """Samples/s of ``dataset`` read in the main process."""
    start = time.perf_counter()
    for i in range(samples):
        dataset[i % len(dataset)]
    return samples / (time.perf_counter() - start)


def loader_rate(dataset: PretrainDataset, samples: int, batch: int = 8) -> float:
    """Samples/s of a one-worker DataLoader over ``dataset``, after its first batch."""
    indices = [i % len(dataset) for i in range(samples + batch)]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch, num_workers=1, **loader_kwargs(1))
    batches = iter(loader)
    next(batches)  # worker start-up
    start, seen = time.perf_counter(), 0
    for clips in batches:
        seen += len(clips)
    return seen / (time.perf_counter() - start)


def _rss_mib() -> float:
    """This process's resident memory now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class _PeakRSS(Dataset):
    """``(item, RSS before, peak RSS after)`` of each item, both in MiB, measured in the loading process."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        before = _rss_mib()
        item = self.dataset[i]
        return item, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def test_loader_rss(root: Path, frames: int, quality: int, seed: int) -> tuple[float, float, int]:
    """(worker RSS before the item, worker peak RSS, clips) of a one-worker test loader over one
    ``frames``-frame video at seq 16, img_dim 112, centre view."""
    csv_file = build_frames(root / "long", 1, frames, quality, seed)
    write_csv(csv_file, [record._replace(label=0) for record in read_csv(csv_file)])  # a labelled CSV
    dataset = ClipDataset(csv_file, "test", seq=16, img_dim=112, views="center")
    loader = DataLoader(_PeakRSS(dataset), batch_size=None, num_workers=1, **loader_kwargs(1))
    (clips, _), before, peak = next(iter(loader))
    return before, peak, len(clips)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # one core, as a DataLoader worker
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        # first, so that the forked worker starts from a parent that has not kept freed memory
        rss = test_loader_rss(Path(tmp), args.long_frames, args.quality, args.seed) if args.test_loader else None
        keep_freed_memory()  # as in a DataLoader worker
        csv_file = build_frames(Path(tmp), args.videos, args.frames, args.quality, args.seed)
        paths = sorted(Path(tmp, "frames").glob("*/*.jpg"))
        size = sum(path.stat().st_size for path in paths) / len(paths) / 1024
        dataset = PretrainDataset(csv_file)
        raw, per_sample = [], []
        for _ in range(args.repeats):
            raw.append(raw_decode_rate(paths))
            per_sample.append(dataset_rate(dataset, args.samples))
        loader = loader_rate(dataset, 4 * args.samples) if args.loader else None
    source = dataset.sample * dataset.seq
    output = (dataset.sample + 1) * dataset.seq
    best_raw, best_samples = max(raw), max(per_sample)
    print(f"frames: {len(paths)} JPEGs of 320x240, mean {size:.1f} KiB, quality {args.quality}")
    print(f"raw decode (full size, PIL, 1 core):   {best_raw:8.0f} frames/s")
    print(f"PretrainDataset (seq {dataset.seq}, sample {dataset.sample}, img_dim {dataset.img_dim}, 1 core): "
          f"{best_samples * source:8.0f} source frames/s ({best_samples:.1f} samples/s, "
          f"{best_samples * output:.0f} output frames/s)")
    print(f"ratio (source frames/s / raw decode):  {best_samples * source / best_raw:8.3f}  (target >= 0.45)")
    print(f"ratio (output frames/s / raw decode):  {best_samples * output / best_raw:8.3f}")
    if loader is not None:
        print(f"DataLoader, 1 worker, batch 8:         {loader * source:8.0f} source frames/s "
              f"({loader:.1f} samples/s, ratio {loader * source / best_raw:.3f})")
    if rss is not None:
        before, peak, clips = rss
        print(f"test loader worker, {args.long_frames}-frame 320x240 video ({clips} clips, seq 16, img_dim 112, "
              f"center): peak RSS {peak:.0f} MiB, {peak - before:.0f} MiB above the {before:.0f} MiB the worker "
              "held before it (target < 300 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
