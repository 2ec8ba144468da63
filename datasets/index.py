"""Frame folders, video files and their CSV indexes: naming, counting, reading with validation, writing.

A frame folder holds ``image_00001.jpg ... image_0000N.jpg`` (1-based, 5 digits); the code
uses 0-based frame indices: index i lives in ``image_{i+1:05d}.jpg``. A video file (mp4, avi,
mkv, webm) stands for the frame folder ``scripts/extract_frames.py`` would make of it: its
frame i is the i-th decoded frame (``datasets.videos``).

Rows have no header: ``path,frames`` (pretraining) or ``path,frames,label`` (downstream,
``label`` a 0-based class index); ``path`` is a frame folder or a video file, and one CSV may
hold both. A relative ``path`` is resolved against the folder of the CSV file, so a dataset
folder holding its CSVs can be moved as a whole.
"""

import csv
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

from engine.errors import UserError
from engine.files import atomic_write


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")


class DataError(UserError, ValueError):
    """A data file (CSV, split list, frame folder) is malformed; the message says where and why."""


class FrameDecodeError(UserError, OSError):
    """A frame file is missing or cannot be decoded; ``.path`` names it. Its subclass
    ``datasets.videos.VideoDecodeError`` is raised for video files. (Defined here, beside
    ``DataError``, so that torch-free code can catch it; ``datasets.frames`` raises it.)"""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        super().__init__(f"cannot decode frame {self.path}: {reason}; re-extract this video "
                         "with scripts/extract_frames.py or drop it from the CSV")


class VideoRecord(NamedTuple):
    """One row of an index: a frame folder or video file, its number of frames and its label (or None)."""

    path: Path
    frames: int
    label: Optional[int] = None


def frame_name(index: int) -> str:
    """File name of the 0-based frame ``index``."""
    return f"image_{index + 1:05d}.jpg"


def is_video_file(path) -> bool:
    """Whether ``path`` names a video file (by its extension, case-insensitive) rather than a frame folder."""
    path = Path(path)
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.is_dir()


def find_videos(root: Path) -> list[tuple[Path, str, str]]:
    """(video file, class, name) of every ``root/<class>/<name>.<ext>`` with a video extension,
    sorted; hidden class folders skipped (no glob: names may hold '[')."""
    videos = []
    for class_dir in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for video in sorted(class_dir.iterdir()):
            if video.is_file() and video.suffix.lower() in VIDEO_EXTENSIONS:
                videos.append((video, class_dir.name, video.stem))
    return videos


def count_frames(folder) -> int:
    """Number of consecutive frames ``image_00001.jpg ...`` in ``folder`` (no glob: names may hold ``[``)."""
    names = set(os.listdir(folder))
    count = 0
    while frame_name(count) in names:
        count += 1
    return count


def read_csv(csv_file, require_labels: bool = False, num_classes: Optional[int] = None,
             check_folders: bool = True) -> list[VideoRecord]:
    """Read and validate every row of ``csv_file``.

    Rows must all have 2 or all have 3 columns (3 when ``require_labels``); frame counts are
    positive integers; labels are integers in ``[0, num_classes)`` (``num_classes=None``: only
    ``>= 0`` is checked); with ``check_folders`` each video file must exist and each frame folder
    must hold at least the row's frame count (a path with a video extension is a video file, unless it
    is a folder; see :func:`_check_path`).
    Raises ``DataError`` naming the file, the line and the problem.
    """
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise DataError(f"{csv_file}: no such CSV file; build it with scripts/make_csv.py")
    base = csv_file.resolve().parent
    records = []
    width = None
    # utf-8-sig: a byte-order mark (Excel and Notepad write one) is not read as part of the first path
    with open(csv_file, newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row:  # blank line
                continue
            where = f"{csv_file}, line {line}"
            if width is None:
                width = len(row)
                if width not in (2, 3) or (require_labels and width != 3):
                    wanted = "3 columns (path,frames,label)" if require_labels else \
                        "2 columns (path,frames) or 3 (path,frames,label)"
                    raise DataError(f"{where}: {width} columns, expected {wanted}; "
                                    "rebuild the file with scripts/make_csv.py")
            elif len(row) != width:
                raise DataError(f"{where}: {len(row)} columns, but the first row has {width}; "
                                "every row needs the same columns (quote paths holding commas)")
            frames = _parse_int(row[1], where, "frame count")
            if frames < 1:
                raise DataError(f"{where}: frame count {frames} is not positive; "
                                "remove the row or re-extract the video")
            label = None
            if width == 3:
                label = _parse_int(row[2], where, "label")
                if label < 0 or (num_classes is not None and label >= num_classes):
                    bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                    raise DataError(f"{where}: label {label} out of range, expected {bound}")
            path = Path(row[0])
            if not path.is_absolute():
                path = Path(os.path.normpath(base / path))
            if check_folders:
                _check_path(path, frames, where)
            records.append(VideoRecord(path, frames, label))
    if not records:
        raise DataError(f"{csv_file}: no rows; build it with scripts/make_csv.py")
    return records


def _check_path(path: Path, frames: int, where: str) -> None:
    """Refuse a row whose video file does not exist, or whose frame folder holds fewer than ``frames`` frames.

    A folder costs one ``stat``, of its last frame ``image_{frames:05d}.jpg``: about as cheap as checking
    that the folder exists, where counting every folder's files costs 5x more (60-frame folders). Only when
    that frame is missing is the folder counted (:func:`count_frames`, as ``scripts/make_csv.py`` counts).
    A folder holding more frames than the row says is accepted; a gap among the earlier frames is left to the
    decoder, which names the missing file. A video file's frames cannot be counted without decoding it: its
    count is left to the decoder (``datasets.videos``).
    """
    if os.path.isfile(os.path.join(path, frame_name(frames - 1))):
        return
    if path.is_dir():
        found = count_frames(path)
        if found < frames:
            raise DataError(f"{where}: the row says {frames} frames, but the frame folder {path} holds {found}; "
                            "the CSV is out of date: re-run scripts/make_csv.py, which recounts every folder")
    elif path.suffix.lower() in VIDEO_EXTENSIONS:
        if not path.is_file():
            raise DataError(f"{where}: video file {path} does not exist; fix the path "
                            "(relative paths are read from the CSV's folder)")
    else:
        raise DataError(f"{where}: frame folder {path} does not exist; "
                        "extract the frames or fix the path (relative paths are read "
                        "from the CSV's folder)")


def _parse_int(text: str, where: str, what: str) -> int:
    """``int(text)`` or a DataError naming ``where`` and ``what``."""
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not an integer") from None


def write_csv(csv_file, records: Iterable[VideoRecord], relative_to: Optional[Path] = None) -> None:
    """Write ``records`` atomically (temp file + rename); labels are written when present.

    With ``relative_to`` (normally the CSV's folder) paths are written relative to it.
    """
    csv_file = Path(csv_file)
    with atomic_write(csv_file, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for record in records:
            path = Path(os.path.relpath(record.path, relative_to)) if relative_to else record.path
            row = [path.as_posix(), record.frames]
            if record.label is not None:
                row.append(record.label)
            writer.writerow(row)
