"""Decode every video VIDEOS/<class>/<name>.<ext> (mp4, avi, mkv, webm) into a frame folder
FRAMES/<class>/<name>/image_00001.jpg ... (one JPEG per decoded frame, in order).

Each video is written to a hidden temporary folder renamed at the end, so a folder that
exists is complete: re-running skips it, and never takes a half-written folder for a
finished one. A video that cannot be decoded is reported with the reason; the others still
complete and the exit status is 1 at the end.
"""

import argparse
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

import av
from tqdm import tqdm

from datasets.index import find_videos, frame_name

def _size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """Output (w, h): the short side scaled to ``short_side`` (None: unchanged)."""
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def extract_video(video: Path, folder: Path, short_side: Optional[int] = None, quality: int = 90) -> int:
    """Write the frames of ``video`` to ``folder`` (via a temporary folder); return their count."""
    tmp = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    tmp.mkdir(parents=True)
    try:
        count = 0
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                width, height = _size(frame.width, frame.height, short_side)
                image = frame.to_image(width=width, height=height, interpolation="AREA")
                image.save(tmp / frame_name(count), quality=quality)
                count += 1
        if count == 0:
            raise ValueError("no frames decoded")
        os.rename(tmp, folder)
        return count
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _job(video: Path, folder: Path, short_side: Optional[int], quality: int) -> tuple[Path, Optional[str]]:
    """Extract one video; return (video, None) or (video, reason it failed)."""
    try:
        extract_video(video, folder, short_side, quality)
        return video, None
    except (av.FFmpegError, OSError, ValueError) as error:
        return video, f"{type(error).__name__}: {error}"


def _run(jobs: list, workers: int):
    """Yield the results of ``_job`` over ``jobs``, in this process or in a pool of ``workers``."""
    if workers == 1:
        yield from (_job(*job) for job in jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        for future in as_completed([pool.submit(_job, *job) for job in jobs]):
            yield future.result()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="video root holding <class>/<name>.<ext> files")
    parser.add_argument("--dst", type=Path, required=True, help="frame root to fill with <class>/<name>/ folders")
    parser.add_argument("--short_side", type=int, default=None,
                        help="resize frames so the short side is this many pixels (default: keep the size)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-95 (default 90)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel processes, one video each (default: number of CPUs)")
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        parser.error(f"--src {args.src}: no such folder")
    if args.short_side is not None and args.short_side < 1:
        parser.error(f"--short_side {args.short_side}: must be >= 1")
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality {args.quality}: must be in 1..95")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    videos = find_videos(args.src)
    failures, jobs, seen = [], [], {}
    for video, class_name, name in videos:
        folder = args.dst / class_name / name
        if folder in seen:
            failures.append((video, f"same frame folder as {seen[folder]}; rename one of them"))
            continue
        seen[folder] = video
        if not folder.is_dir():
            jobs.append((video, folder, args.short_side, args.quality))
    print(f"{len(videos)} videos under {args.src}: {len(videos) - len(jobs) - len(failures)} already "
          f"extracted, {len(jobs)} to do")
    for video, error in tqdm(_run(jobs, args.workers), total=len(jobs), desc="extract", unit="video"):
        if error:
            failures.append((video, error))
    for video, error in failures:
        print(f"failed: {video}: {error}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(videos)} videos failed; fix or remove them and re-run "
              "(finished videos are skipped)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
