"""The input pipeline against the training step: train.py's loop at the paper's configuration (``--amp``)
fed from three kinds of data, each with several numbers of loader workers, beside the bare step.

    python scripts/input_check.py --out runs/input_check [--workers 6 14] [--steps 40]

Kinds of data (synthetic, built under ``OUT/data`` unless already there):

- ``frames``: 320x240 JPEG frame folders of 120 frames (``scripts/bench_data.py``'s moving shapes, quality 85);
- ``videos``: 456x256 H.264 MP4s of 300 frames, 30 fps, a keyframe every 2 s (``bench_data.py``'s camera-like
  scenes, libx264 CRF 23);
- ``short128``: the frames of those videos as ``scripts/extract_frames.py --short_side 128`` writes them
  (228x128 JPEGs, quality 90).

A run's CSV names the ``--videos`` built videos over and over, ``--steps`` batches of them, so that one epoch
holds every step; after their first reading the files sit in the page cache: the runs measure decoding and
augmentation, not the disk.

Every run is ``train.main`` (train.py's own command line: ``--amp --epoch 1 --split 0 --queue_start 0``, so the
graph term and the whole prototype bank are on, as in the bare step; otherwise the paper's defaults), called in
this one process one run after the other. Before them the bare step (``bench_train.bare_step_seconds``:
``train.train_step`` back to back on one batch already on the device) is timed; its warm-up pays cuDNN's kernel
timing (``cudnn.benchmark``), which a fresh train.py pays in its first steps, once for all the runs. It is timed
again after the runs. Per run, from its TensorBoard scalars: the loop's seconds per step (``speed/step_seconds``)
and ``speed/data_wait_fraction``, means over the logged intervals after the first (the first holds the
loader's start: every worker builds its first batch at once), the first interval's seconds per step beside them.

Prints one line per run, also to ``OUT/input_check.txt``, and writes ``OUT/input_check.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import train
from datasets.index import VideoRecord, count_frames, read_csv, write_csv
from scripts import bench_data, bench_train, extract_frames

KINDS = ("frames", "videos", "short128")
VIDEO_SIZE, KEYFRAME_EVERY = (456, 256), 60  # a keyframe every 2 s at bench_data.encode_video's 30 fps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the data, the runs, input_check.txt and input_check.json")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="kinds of data (default: all)")
    p.add_argument("--workers", type=int, nargs="+", default=[6, 14], help="loader workers of the runs (default: 6 14)")
    p.add_argument("--steps", type=int, default=40, help="training steps of each run (default: 40)")
    p.add_argument("--log_every", type=int, default=10,
                   help="train.py's --log_every: the logged intervals; the first is left out (default: 10)")
    p.add_argument("--bare_steps", type=int, default=20, help="steps of each bare-step timing (default: 20)")
    p.add_argument("--videos", type=int, default=16, help="distinct videos built of each kind (default: 16)")
    p.add_argument("--frames", type=int, default=120, help="frames of a frame-folder video (default: 120)")
    p.add_argument("--video_frames", type=int, default=300, help="frames of a video file, 30 fps (default: 300)")
    p.add_argument("--build_workers", type=int, default=8,
                   help="processes drawing the videos and extracting frames (default: 8)")
    g = p.add_argument_group("sizes (default: the paper's)")
    g.add_argument("--train_batch", type=int, default=64, help="videos per batch (default: 64)")
    g.add_argument("--seq", type=int, default=16, help="frames per clip (default: 16)")
    g.add_argument("--img_dim", type=int, default=112, help="crop size (default: 112)")
    args = p.parse_args(argv)
    if args.steps <= args.log_every:
        p.error(f"--steps {args.steps} must exceed --log_every {args.log_every}: the first interval is left out")
    return args


def _frame_folder(folder: Path, frames: int, seed: int) -> VideoRecord:
    return bench_data.write_frame_folder(folder, frames, quality=85, rng=np.random.default_rng(seed))


def _video(path: Path, frames: int, seed: int) -> None:
    bench_data.encode_video(path, *VIDEO_SIZE, frames, KEYFRAME_EVERY, np.random.default_rng(seed))


def build_data(root: Path, kinds: list[str], args: argparse.Namespace) -> dict[str, list[VideoRecord]]:
    """The videos of each kind under ``root``, drawn by ``--build_workers`` processes, video ``v`` from seed ``v``
    (built once: a kind whose CSV exists is read back)."""
    records = {}
    with ProcessPoolExecutor(args.build_workers) as pool:
        if "frames" in kinds:
            csv_file = root / "frames320.csv"
            if not csv_file.is_file():
                tic = time.perf_counter()
                folders = [root / "frames320" / f"video_{v:03d}" for v in range(args.videos)]
                write_csv(csv_file, pool.map(_frame_folder, folders, [args.frames] * args.videos, range(args.videos)))
                print(f"built {args.videos} frame folders of {args.frames} 320x240 JPEGs in "
                      f"{time.perf_counter() - tic:.0f} s", flush=True)
            records["frames"] = read_csv(csv_file)
        if {"videos", "short128"} & set(kinds):
            videos_csv, short_csv = root / "videos456.csv", root / "short128.csv"
            if not (videos_csv.is_file() and short_csv.is_file()):
                tic = time.perf_counter()
                folder = root / "videos456" / "videos"  # extract_frames.py reads <class>/<name>.mp4: class "videos"
                paths = [folder / f"video_{v:03d}.mp4" for v in range(args.videos)]
                list(pool.map(_video, paths, [args.video_frames] * args.videos, range(args.videos)))
                built = time.perf_counter()
                status = extract_frames.main(["--src", str(folder.parent), "--dst", str(root / "short128"),
                                              "--short_side", "128", "--workers", str(args.build_workers)])
                if status:
                    raise SystemExit(f"scripts/extract_frames.py failed (status {status})")
                frames = [root / "short128" / "videos" / path.stem for path in paths]
                counts = [count_frames(f) for f in frames]
                write_csv(videos_csv, [VideoRecord(p, n) for p, n in zip(paths, counts)])
                write_csv(short_csv, [VideoRecord(f, n) for f, n in zip(frames, counts)])
                print(f"built {args.videos} H.264 videos of {args.video_frames} {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} "
                      f"frames (keyframe every {KEYFRAME_EVERY}) in {built - tic:.0f} s, extracted at --short_side "
                      f"128 in {time.perf_counter() - built:.0f} s", flush=True)
            records["videos"], records["short128"] = read_csv(videos_csv), read_csv(short_csv)
    return {kind: records[kind] for kind in kinds}


def bare_step(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds of one bare full step at the runs' sizes (bf16 and channels-last on CUDA, as train.py --amp)."""
    model, optimizer, bank, clips = bench_train.setup("r3d18", args.train_batch, args.seq, args.img_dim, device,
                                                      channels_last=device.type == "cuda")
    step = bench_train.step_fn(model, optimizer, bank, clips, amp=device.type == "cuda")
    return bench_train.bare_step_seconds(step, args.bare_steps, device)


def interval_means(run_dir: Path) -> dict[str, float]:
    """From a run's TensorBoard scalars: the first interval's seconds per step, and the step-weighted means of
    ``speed/step_seconds`` and ``speed/data_wait_fraction`` over the later intervals."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    seconds = [(e.step, e.value) for e in acc.Scalars("speed/step_seconds")]
    waits = [e.value for e in acc.Scalars("speed/data_wait_fraction")]
    spans = [step - previous for (step, _), previous in zip(seconds, [0] + [s for s, _ in seconds])]
    later = list(zip(spans, [v for _, v in seconds], waits))[1:]
    steps = sum(n for n, _, _ in later)
    return {"first_s": seconds[0][1], "first_steps": spans[0], "loop_s": sum(n * s for n, s, _ in later) / steps,
            "data_wait": sum(n * w for n, _, w in later) / steps, "measured_steps": steps}


def run(kind: str, workers: int, records: list[VideoRecord], args: argparse.Namespace) -> dict[str, float]:
    """One train.py run of ``--steps`` steps on ``records`` with ``workers`` loader workers; its interval means."""
    run_dir = args.out / "runs" / f"{kind}_w{workers}"
    csv_file = args.out / "runs" / f"{kind}.csv"
    csv_file.parent.mkdir(parents=True, exist_ok=True)
    write_csv(csv_file, itertools.islice(itertools.cycle(records), args.steps * args.train_batch))
    flags = ["--csv_file", str(csv_file), "--out_dir", str(run_dir), "--overwrite", "--workers", str(workers), "--amp",
             "--epoch", "1", "--split", "0", "--queue_start", "0", "--log_every", str(args.log_every), "--save_every",
             "0", "--keep_epochs", "0", "--train_batch", str(args.train_batch), "--seq", str(args.seq), "--img_dim",
             str(args.img_dim)]
    output = run_dir.parent / f"{run_dir.name}.out"
    print(f"{kind}, {workers} workers: train.py {' '.join(flags)} (its printed lines: {output})", flush=True)
    tic = time.perf_counter()
    with open(output, "w") as f, contextlib.redirect_stdout(f):  # train.py's lines; warnings and errors still show
        train.main(flags)
    seconds = time.perf_counter() - tic
    for path in run_dir.glob("*.pth"):  # only the scalars are read
        path.unlink()
    return {"seconds": seconds, **interval_means(run_dir)}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {args.train_batch}, seq {args.seq}, img {args.img_dim}, "
          f"{'bf16' if device.type == 'cuda' else 'fp32 (--amp is CUDA only)'}", flush=True)
    records = build_data(args.out / "data", args.kinds, args)
    tic = time.perf_counter()
    bare = [bare_step(args, device)]
    print(f"bare step: {bare[0]:.4f} s ({time.perf_counter() - tic:.0f} s with its warm-up)", flush=True)
    results = []
    for kind in args.kinds:
        for workers in args.workers:
            r = {"kind": kind, "workers": workers, **run(kind, workers, records[kind], args)}
            results.append(r)
            print(f"{kind}, {workers} workers: loop {r['loop_s']:.4f} s/step ({r['loop_s'] / bare[0]:.2f}x the bare "
                  f"step before the runs), data wait fraction {r['data_wait']:.3f}; first {r['first_steps']} steps "
                  f"{r['first_s']:.4f} s/step; {r['seconds']:.0f} s in all", flush=True)
    bare.append(bare_step(args, device))
    bare_s = statistics.fmean(bare)
    lines = [f"input against the step on {name}: {args.steps} steps a run, batch {args.train_batch}, seq {args.seq}, "
             f"img {args.img_dim}; loop s/step and data wait: means over the steps after the first {args.log_every}; "
             f"bare step {bare[0]:.4f} s before the runs, {bare[1]:.4f} s after (mean {bare_s:.4f} s)",
             f"{'data':>9s} | workers | loop s/step | first {args.log_every} steps s/step | loop / bare | "
             f"data wait fraction | clips/s | run s"]
    for r in results:
        r["ratio"] = r["loop_s"] / bare_s
        lines.append(f"{r['kind']:>9s} | {r['workers']:7d} | {r['loop_s']:11.4f} | {r['first_s']:20.4f} | "
                     f"{r['ratio']:11.2f} | {r['data_wait']:18.3f} | {3 * args.train_batch / r['loop_s']:7.0f} | "
                     f"{r['seconds']:5.0f}")
    print("\n" + "\n".join(lines))
    (args.out / "input_check.txt").write_text("\n".join(lines) + "\n")
    (args.out / "input_check.json").write_text(json.dumps(
        {"device": name, "bare_s": bare, "args": {k: str(v) for k, v in vars(args).items()}, "runs": results},
        indent=2))
    print(f"-> {args.out / 'input_check.txt'}, {args.out / 'input_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
