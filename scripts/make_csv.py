"""Write the CSV indexes of extracted frame folders or of video files (docs/data.md: "Data preparation").

  frames  --root FRAMES --out FILE [--labels]   one row per FRAMES/<class>/<video>/ folder:
          path,frames (path,frames,label with --labels; label = class folder's sorted index)
  videos  --root VIDEOS --out FILE [--labels] [--workers N]   the same, one row per video file
          VIDEOS/<class>/<name>.{mp4,avi,mkv,webm}, read without extracting frames
  ucf101  --root ROOT --splits DIR --split K --out_dir OUT [--videos]   official UCF-101 lists ->
          OUT/ucf101_{train,test}_splitK.csv (labels from classInd.txt, 0-based)
  hmdb51  --root ROOT --splits DIR --split K --out_dir OUT [--videos]   official HMDB-51 lists ->
          OUT/hmdb51_{train,test}_splitK.csv (labels: sorted class names)

For ucf101 and hmdb51, ROOT holds frame folders ROOT/<class>/<video>/ or video files
ROOT/<class>/<video>.<ext>: each listed video takes its frame folder if there is one, else its
video file (with --videos: video files only).

A video file's frame count is the number of frames a full decode gives (every frame decoded,
none converted; in parallel, one decoder thread per process): container headers often give no
count (Matroska, WebM) or a wrong one. A video that cannot be opened, has no video stream or
does not decode is reported by name with the reason and left out; the CSV is still written and
the exit status is 1 at the end.

Paths are written absolute. Videos listed in a split but missing from ROOT, or with no
frames, are reported with a count and left out; class folder and file names are matched
literally (no glob), so names with '[', spaces or non-ASCII characters work. The ucf101 and
hmdb51 commands also write OUT/<dataset>_classes.txt (class names in label order).
"""

import argparse
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from datasets.index import VIDEO_EXTENSIONS, DataError, VideoRecord, count_frames, find_videos, write_csv
from engine.errors import exit_on_error

_HMDB_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>\d+)\.txt$")


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted by name (hidden ones, like unfinished extractions, skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank stripped lines of a text file with their 1-based numbers."""
    if not path.is_file():
        raise DataError(f"{path}: no such split file; pass the folder holding the official lists")
    text = path.read_text(encoding="utf-8-sig")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _report(kind: str, missing: list[str], root: Path) -> None:
    """Print how many listed videos have no frame folder (or an empty one) and a few names."""
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        print(f"warning: {kind}: {len(missing)} videos without frames under {root}, left out "
              f"(extract them, or ignore if expected): {shown}", file=sys.stderr)


def _count_video(video: Path) -> tuple[Path, int, Optional[str]]:
    """(video, its frame count, None) or (video, 0, why it cannot be read)."""
    from datasets.videos import VideoDecodeError, count_frames as count_video_frames  # PyAV, only where needed

    try:
        return video, count_video_frames(video), None
    except VideoDecodeError as error:
        return video, 0, error.reason if error.index is None else f"frame {error.index}: {error.reason}"


def _run(videos: list[Path], workers: int):
    """Yield ``_count_video`` of each of ``videos``, in this process or in a pool of ``workers``."""
    if workers == 1 or len(videos) < 2:
        yield from map(_count_video, videos)
        return
    with ProcessPoolExecutor(min(workers, len(videos))) as pool:
        for future in as_completed([pool.submit(_count_video, video) for video in videos]):
            yield future.result()


def count_videos(videos: list[Path], workers: int) -> tuple[dict[Path, int], list[tuple[Path, str]]]:
    """Frame counts of ``videos`` by full decode, with a progress bar, in ``workers`` processes:
    ({video: frames}, [(video, reason)] for those that cannot be read)."""
    counts, failures = {}, []
    for video, frames, error in tqdm(_run(videos, workers), total=len(videos), desc="count frames", unit="video"):
        if error is None:
            counts[video] = frames
        else:
            failures.append((video, error))
    return counts, sorted(failures)


def _video_file(folder: Path, name: str) -> Optional[Path]:
    """The video file ``folder/name.<ext>`` (a video extension, lower or upper case), or None."""
    for extension in VIDEO_EXTENSIONS:
        for suffix in (extension, extension.upper()):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def _records(root: Path, entries: list[tuple[str, str, int]], kind: str, videos_only: bool = False,
             workers: int = 1) -> tuple[list[VideoRecord], list[tuple[Path, str]]]:
    """Records for (class, video name, label) entries, in their order, and the unreadable videos.

    An entry is its frame folder ``root/class/name/`` when it exists (unless ``videos_only``),
    else its video file ``root/class/name.<ext>``; entries with neither (or an empty folder)
    are reported and left out.
    """
    found, missing, files = [], [], []
    for class_name, video, label in entries:
        folder = root / class_name / video
        if not videos_only and folder.is_dir():
            frames = count_frames(folder)
            found.append((folder.resolve(), frames, label) if frames else None)
        elif (file := _video_file(root / class_name, video)) is not None:
            found.append((file.resolve(), None, label))
            files.append(file.resolve())
        else:
            found.append(None)
        if found[-1] is None:
            missing.append(f"{class_name}/{video}")
    _report(kind, missing, root)
    counts, failures = count_videos(files, workers) if files else ({}, [])
    records = [VideoRecord(path, frames if frames is not None else counts[path], label)
               for path, frames, label in filter(None, found) if frames is not None or path in counts]
    return records, failures


def frames_csv(root: Path, out: Path, labels: bool) -> int:
    """``frames`` command: index every class/video folder under ``root``; return the row count."""
    entries = [(c.name, v.name, label) for label, c in enumerate(_subdirs(root)) for v in _subdirs(c)]
    if not entries:
        raise DataError(f"{root}: no <class>/<video>/ frame folders found; run scripts/extract_frames.py first")
    records, _ = _records(root, entries, "frames")
    if not labels:
        records = [VideoRecord(r.path, r.frames) for r in records]
    write_csv(out, records)
    return len(records)


def videos_csv(root: Path, out: Path, labels: bool, workers: int) -> tuple[int, list[tuple[Path, str]]]:
    """``videos`` command: index every class/video file under ``root``; return the row count and
    the videos left out with the reason."""
    label_of = {c.name: label for label, c in enumerate(_subdirs(root))}
    videos = find_videos(root)
    if not videos:
        raise DataError(f"{root}: no <class>/<name>.<ext> video files found ({', '.join(VIDEO_EXTENSIONS)})")
    counts, failures = count_videos([video.resolve() for video, _, _ in videos], workers)
    records = [VideoRecord(video.resolve(), counts[video.resolve()], label_of[class_name] if labels else None)
               for video, class_name, _ in videos if video.resolve() in counts]
    write_csv(out, records)
    return len(records), failures


def ucf101_lists(splits: Path, split: int) -> tuple[list[str], dict[str, list[tuple[str, str, int]]]]:
    """Classes (label order) and {'train'/'test': [(class, video folder, label)]} of UCF-101."""
    classes = []
    for n, line in _lines(splits / "classInd.txt"):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
            raise DataError(f"{splits / 'classInd.txt'}, line {n}: expected '{len(classes) + 1} <class>', "
                            f"got {line!r}")
        classes.append(parts[1])
    index = {name: i for i, name in enumerate(classes)}
    lists = {}
    for kind in ("train", "test"):
        path = splits / f"{kind}list{split:02d}.txt"
        entries = []
        for n, line in _lines(path):
            video, label = line.rsplit(maxsplit=1) if kind == "train" else (line, None)
            class_name, _, file_name = video.partition("/")
            if class_name not in index or not file_name:
                raise DataError(f"{path}, line {n}: {line!r} is not '<class>/<video>.avi"
                                f"{' <label>' if kind == 'train' else ''}' with a class of classInd.txt")
            if label is not None and label != str(index[class_name] + 1):
                raise DataError(f"{path}, line {n}: label {label!r} does not match classInd.txt's "
                                f"{index[class_name] + 1} for {class_name}")
            entries.append((class_name, Path(file_name).stem, index[class_name]))
        lists[kind] = entries
    return classes, lists


def hmdb51_lists(splits: Path, split: int) -> tuple[list[str], dict[str, list[tuple[str, str, int]]]]:
    """Classes (sorted) and {'train'/'test': [(class, video folder, label)]} of HMDB-51."""
    if not splits.is_dir():
        raise DataError(f"{splits}: no such folder; pass testTrainMulti_7030_splits")
    files = {}
    for path in splits.iterdir():
        match = _HMDB_FILE.match(path.name)
        if match and int(match["split"]) == split:
            files[match["name"]] = path
    if not files:
        raise DataError(f"{splits}: no <class>_test_split{split}.txt files")
    classes = sorted(files)
    lists = {"train": [], "test": []}
    for label, class_name in enumerate(classes):
        for n, line in _lines(files[class_name]):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{files[class_name]}, line {n}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] != "0":
                kind = "train" if parts[1] == "1" else "test"
                lists[kind].append((class_name, Path(parts[0]).stem, label))
    return classes, lists


def split_csvs(dataset: str, root: Path, splits: Path, split: int, out_dir: Path, videos_only: bool = False,
               workers: int = 1) -> tuple[dict[str, int], list[tuple[Path, str]]]:
    """``ucf101`` / ``hmdb51`` commands: write the train/test CSVs; return their row counts and
    the videos left out as unreadable, with the reason."""
    classes, lists = (ucf101_lists if dataset == "ucf101" else hmdb51_lists)(splits, split)
    counts, failures = {}, []
    for kind, entries in lists.items():
        records, failed = _records(root, entries, f"{dataset} split {split} {kind}", videos_only, workers)
        write_csv(out_dir / f"{dataset}_{kind}_split{split}.csv", records)
        counts[kind] = len(records)
        failures += failed
    (out_dir / f"{dataset}_classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return counts, failures


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    workers = dict(type=int, default=os.cpu_count() or 1,
                   help="parallel processes counting video frames, one video each (default: number of CPUs)")
    frames = commands.add_parser("frames", help="index every FRAMES/<class>/<video>/ folder")
    frames.add_argument("--root", type=Path, required=True, help="frame root holding <class>/<video>/ folders")
    frames.add_argument("--out", type=Path, required=True, help="CSV file to write")
    frames.add_argument("--labels", action="store_true",
                        help="add a label column: index of the class folder in sorted order (default: off)")
    videos = commands.add_parser("videos", help="index every VIDEOS/<class>/<name>.<ext> video file")
    videos.add_argument("--root", type=Path, required=True, help="video root holding <class>/<name>.<ext> files")
    videos.add_argument("--out", type=Path, required=True, help="CSV file to write")
    videos.add_argument("--labels", action="store_true",
                        help="add a label column: index of the class folder in sorted order (default: off)")
    videos.add_argument("--workers", **workers)
    for name, lists in (("ucf101", "classInd.txt, trainlist0K.txt, testlist0K.txt"),
                        ("hmdb51", "<class>_test_splitK.txt files")):
        command = commands.add_parser(name, help=f"train/test CSVs from the official {name} split lists")
        command.add_argument("--root", type=Path, required=True,
                             help="root holding <class>/<video>/ frame folders or <class>/<video>.<ext> files")
        command.add_argument("--splits", type=Path, required=True, help=f"folder of the official lists ({lists})")
        command.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="split number (default 1)")
        command.add_argument("--out_dir", type=Path, required=True, help="folder for the CSVs (created)")
        command.add_argument("--videos", action="store_true",
                             help="index the video files even where frame folders exist (default: a listed "
                                  "video's frame folder if there is one, else its video file)")
        command.add_argument("--workers", **workers)
    args = parser.parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        parser.error(f"--workers {args.workers}: must be >= 1")
    return args


def main(argv=None) -> int:
    """The command line: 0 when every video is indexed, 1 when unreadable videos were left out of the CSV
    (listed), and a mistake to fix (no such folder, a bad split list) one ``error: ...`` line and status 2."""
    args = parse_args(argv)
    with exit_on_error(status=2):
        return index(args)


def index(args: argparse.Namespace) -> int:
    """What the command line does; a mistake to fix raises ``DataError``. Returns the exit status."""
    if not args.root.is_dir():
        advice = "pass the folder holding <class>/ folders of videos" if args.command == "videos" else \
            "run scripts/extract_frames.py first, or pass the video folder"
        raise DataError(f"{args.root}: no such folder; {advice}")
    failures = []
    if args.command == "frames":
        rows = frames_csv(args.root, args.out, args.labels)
        print(f"{args.out}: {rows} videos")
    elif args.command == "videos":
        rows, failures = videos_csv(args.root, args.out, args.labels, args.workers)
        print(f"{args.out}: {rows} videos")
    else:
        counts, failures = split_csvs(args.command, args.root, args.splits, args.split, args.out_dir,
                                      args.videos, args.workers)
        print(f"{args.out_dir}: {args.command} split {args.split}: {counts['train']} train, "
              f"{counts['test']} test videos")
    for video, reason in failures:
        print(f"failed: {video}: {reason}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} unreadable videos were left out of the CSV; re-encode or replace them and "
              "re-run, or extract their frames with scripts/extract_frames.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
