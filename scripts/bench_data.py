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

With ``--source videos``: frame folders against video files. Builds 10 s, 30 fps H.264 MP4s
(libx264, its default quality: CRF 23, preset medium) of camera-like content (a panning textured
scene, moving textured objects, sensor noise) at 320x240 (UCF-101, HMDB-51) and at 456x256
(Kinetics-400 after a 256 short-side resize), with a keyframe every 2 s as in many downloaded
videos and, at 456x256, also with libx264's default of one per 250 frames; their frame folders
are extracted by ``scripts/extract_frames.py`` at JPEG quality 90. Prints, per kind, the bytes on
disk of the videos and of the frames, and the samples/s of ``PretrainDataset`` (paper
configuration, one core) on each, their ratio (target: videos >= 0.5x frames), and where a video
sample's time goes (open + packet numbering, seeking + decoding, RGB conversion, the rest).
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

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from datasets import ClipDataset, PretrainDataset
from datasets.index import VideoRecord, frame_name, read_csv, write_csv
from datasets.pretrain import sample_indices
from datasets.videos import VideoReader
from datasets.loader import keep_freed_memory, loader_kwargs
from scripts.extract_frames import extract_video

# (name, width, height, frames between keyframes) of the --source videos kinds
VIDEO_KINDS = (("320x240, keyframe every 2 s", 320, 240, 60),
               ("456x256, keyframe every 2 s", 456, 256, 60),
               ("456x256, keyframe every 250 frames", 456, 256, 250))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("frames", "videos"), default="frames",
                        help="frames: JPEG decode vs PretrainDataset; videos: frame folders vs video files "
                             "(default frames)")
    parser.add_argument("--videos", type=int, default=None,
                        help="synthetic videos to build, of each kind for --source videos (default 6; 3 for videos)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per video (default 120; 300 = 10 s at 30 fps for videos)")
    parser.add_argument("--samples", type=int, default=30,
                        help="dataset samples per timed run (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each kind; best kept (default 5)")
    parser.add_argument("--quality", type=int, default=None,
                        help="JPEG quality of the frames, 1-95 (default 85; 90 for videos, as extract_frames.py)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--loader", action="store_true",
                        help="also time a DataLoader with one worker (batches of 8, after the first)")
    parser.add_argument("--test_loader", action="store_true",
                        help="also report the peak RSS of a test-mode ClipDataset loader worker on one long video")
    parser.add_argument("--long_frames", type=int, default=1800,
                        help="frames of the long video of --test_loader (default 1800)")
    return parser.parse_args(argv)


def write_frame_folder(folder: Path, frames: int, quality: int, rng: np.random.Generator) -> VideoRecord:
    """Write ``frames`` 320x240 JPEGs of four shapes moving over a smooth background, with noise, to ``folder``."""
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
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
    return VideoRecord(folder, frames)


def build_frames(root: Path, videos: int, frames: int, quality: int, seed: int) -> Path:
    """Write ``videos`` folders of ``frames`` 320x240 JPEGs under ``root``; return the CSV path."""
    rng = np.random.default_rng(seed)
    records = [write_frame_folder(root / "frames" / f"video_{v:03d}", frames, quality, rng) for v in range(videos)]
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


def scene_frames(width: int, height: int, frames: int, rng: np.random.Generator):
    """Yield ``frames`` RGB uint8 frames of camera-like content: a textured scene panning by about
    a pixel a frame, three textured objects moving across it, and sensor noise."""
    margin = frames + 64
    canvas_h, canvas_w = height + 64, width + margin

    def texture(h, w, scales=(2, 8, 32, 120)):
        out = np.zeros((h, w, 3), np.float32)
        for scale, weight in zip(scales, (22, 25, 30, 45)):
            grid = rng.uniform(-1, 1, (h // scale + 2, w // scale + 2, 3)).astype(np.float32)
            up = np.asarray(Image.fromarray(((grid + 1) * 127.5).astype(np.uint8)).resize(
                ((w // scale + 2) * scale, (h // scale + 2) * scale), Image.BICUBIC), np.float32)[:h, :w]
            out += (up / 127.5 - 1) * weight
        return out

    scene = texture(canvas_h, canvas_w) + rng.uniform(60, 190, 3).astype(np.float32)
    objects = [(texture(48, 48) + rng.uniform(40, 220, 3).astype(np.float32), rng.uniform(0, width - 48),
                rng.uniform(0, height - 48), rng.uniform(-3, 3), rng.uniform(-2, 2)) for _ in range(3)]
    yy, xx = np.mgrid[0:48, 0:48]
    disc = (yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 24 ** 2
    for t in range(frames):
        image = scene[32 + int(8 * np.sin(t / 40)):, t:][:height, :width].copy()  # pan right, sway
        for patch, x0, y0, vx, vy in objects:
            x, y = int(x0 + vx * t) % (width - 48), int(y0 + vy * t) % (height - 48)
            image[y:y + 48, x:x + 48][disc] = patch[disc]
        image += rng.normal(0, 4.0, image.shape).astype(np.float32)
        yield image.clip(0, 255).astype(np.uint8)


def encode_video(path: Path, width: int, height: int, frames: int, keyint: int, rng: np.random.Generator) -> None:
    """Write ``frames`` frames of :func:`scene_frames` to ``path`` as a 30 fps H.264 MP4 with a keyframe every
    ``keyint`` frames (otherwise libx264's defaults: CRF 23, preset medium)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(keyint)}
        for image in scene_frames(width, height, frames, rng):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def build_videos(root: Path, videos: int, frames: int, quality: int, seed: int) -> dict[str, dict]:
    """Per kind of VIDEO_KINDS: MP4s and their extracted frame folders under ``root``, CSVs of
    both and their bytes on disk."""
    rng = np.random.default_rng(seed)
    kinds = {}
    for name, width, height, keyint in VIDEO_KINDS:
        folder = root / f"{width}x{height}_g{keyint}"
        video_records, frame_records = [], []
        for v in range(videos):
            path = folder / "videos" / f"video_{v:03d}.mp4"
            encode_video(path, width, height, frames, keyint, rng)
            frame_folder = folder / "frames" / path.stem
            count = extract_video(path, frame_folder, quality=quality)
            video_records.append(VideoRecord(path, count))
            frame_records.append(VideoRecord(frame_folder, count))
        write_csv(folder / "videos.csv", video_records)
        write_csv(folder / "frames.csv", frame_records)
        kinds[name] = {
            "videos": folder / "videos.csv", "frames": folder / "frames.csv", "records": video_records,
            "video_bytes": sum(p.stat().st_size for p in (folder / "videos").iterdir()),
            "frame_bytes": sum(p.stat().st_size for p in (folder / "frames").glob("*/*.jpg")),
            "seconds": videos * frames / 30}
    return kinds


class _CountingReader(VideoReader):
    """A VideoReader that counts the frames its decoder gives."""

    decoded = 0

    def _next(self, target: int):
        frame, index = super()._next(target)
        self.decoded += frame is not None
        return frame, index


def video_breakdown(records: list[VideoRecord], dataset: PretrainDataset, samples: int) -> dict[str, float]:
    """Mean ms per sample of the steps of reading a pretraining sample's frames from video files
    (open + packet numbering, seeking + decoding, RGB conversion) and the frames decoded per sample."""
    totals = dict(open=0.0, decode=0.0, convert=0.0, decoded=0.0)
    for k in range(samples):
        record = records[k % len(records)]
        indices, _, _ = sample_indices(record.frames, dataset.seq, dataset.sample, dataset.rate)
        start = time.perf_counter()
        with _CountingReader(record.path) as video:
            opened = time.perf_counter()
            wanted = set(indices)
            frames = [frame for index in sorted(wanted) for _, frame in video.decode_to(index, wanted.__contains__)]
            decoded = time.perf_counter()
            for frame in frames:
                video.to_rgb(frame)
            converted = time.perf_counter()
            totals["decoded"] += video.decoded
        totals["open"] += 1000 * (opened - start)
        totals["decode"] += 1000 * (decoded - opened)
        totals["convert"] += 1000 * (converted - decoded)
    return {key: value / samples for key, value in totals.items()}


def main_videos(args: argparse.Namespace) -> int:
    """``--source videos``: frame folders against video files, per kind of VIDEO_KINDS."""
    videos, frames, quality = args.videos or 3, args.frames or 300, args.quality or 90
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        print(f"building {videos} videos of {frames} frames of each kind and their frame folders ...", flush=True)
        kinds = build_videos(Path(tmp), videos, frames, quality, args.seed)
        rates = {}
        for name, kind in kinds.items():
            datasets = {source: PretrainDataset(kind[source]) for source in ("frames", "videos")}
            best, steps = {source: 0.0 for source in datasets}, {}
            for _ in range(args.repeats):  # interleaved, best of each: damps other processes' noise
                for source, dataset in datasets.items():
                    best[source] = max(best[source], dataset_rate(dataset, args.samples))
                for step, ms in video_breakdown(kind["records"], datasets["videos"], args.samples).items():
                    steps[step] = min(steps.get(step, ms), ms)
            rates[name] = best, steps
    print(f"PretrainDataset, paper configuration (seq 16, sample 2, rate 3, img_dim 112), 1 core, best of "
          f"{args.repeats} x {args.samples} samples; {videos} videos of {frames} frames per kind, H.264 (libx264 "
          f"CRF 23) vs JPEG quality {quality} frames (scripts/extract_frames.py)")
    for name, kind in kinds.items():
        best, steps = rates[name]
        ratio = best["videos"] / best["frames"]
        print(f"{name}:")
        print(f"  disk:  videos {kind['video_bytes'] / 2**20:7.2f} MiB "
              f"({kind['video_bytes'] * 8 / kind['seconds'] / 1000:.0f} kbit/s), "
              f"frames {kind['frame_bytes'] / 2**20:7.2f} MiB: {kind['frame_bytes'] / kind['video_bytes']:.1f}x less "
              f"for videos (target >= 5x)")
        print(f"  speed: frames {best['frames']:6.1f} samples/s, videos {best['videos']:6.1f} samples/s: "
              f"ratio {ratio:.2f} (target >= 0.5)")
        print(f"  a video sample ({1000 / best['videos']:.1f} ms): open + number packets {steps['open']:.1f} ms, "
              f"seek + decode {steps['decode']:.1f} ms ({steps['decoded']:.0f} frames decoded for 32 indices), "
              f"RGB conversion {steps['convert']:.1f} ms; a frame-folder sample: {1000 / best['frames']:.1f} ms")
    return 0


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
    dataset = ClipDataset(csv_file, "test", seq=16, img_dim=112, views="center", lazy=True)
    loader = DataLoader(_PeakRSS(dataset), batch_size=None, num_workers=1, **loader_kwargs(1))
    (clips, _), before, peak = next(iter(loader))
    return before, peak, len(clips)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # one core, as a DataLoader worker
    torch.manual_seed(args.seed)
    if args.source == "videos":
        return main_videos(args)
    args.videos, args.frames, args.quality = args.videos or 6, args.frames or 120, args.quality or 85
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
