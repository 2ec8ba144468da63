"""Write the CSV indexes of extracted frame folders (DESIGN.md §1).

  frames  --root FRAMES --out FILE [--labels]   one row per FRAMES/<class>/<video>/ folder:
          path,frames (path,frames,label with --labels; label = class folder's sorted index)
  ucf101  --root FRAMES --splits DIR --split K --out_dir OUT   official UCF-101 lists ->
          OUT/ucf101_{train,test}_splitK.csv (labels from classInd.txt, 0-based)
  hmdb51  --root FRAMES --splits DIR --split K --out_dir OUT   official HMDB-51 lists ->
          OUT/hmdb51_{train,test}_splitK.csv (labels: sorted class names)

Paths are written absolute. Videos listed in a split but missing from FRAMES, or with no
frames, are reported with a count and left out; class folder and file names are matched
literally (no glob), so names with '[', spaces or non-ASCII characters work. The ucf101 and
hmdb51 commands also write OUT/<dataset>_classes.txt (class names in label order).
"""

import argparse
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.index import DataError, VideoRecord, count_frames, write_csv

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


def _records(root: Path, entries: list[tuple[str, str, int]], kind: str) -> list[VideoRecord]:
    """Records for (class, video folder name, label) entries; missing or empty ones reported."""
    records, missing = [], []
    for class_name, video, label in entries:
        folder = root / class_name / video
        frames = count_frames(folder) if folder.is_dir() else 0
        if frames:
            records.append(VideoRecord(folder.resolve(), frames, label))
        else:
            missing.append(f"{class_name}/{video}")
    _report(kind, missing, root)
    return records


def frames_csv(root: Path, out: Path, labels: bool) -> int:
    """``frames`` command: index every class/video folder under ``root``; return the row count."""
    entries = [(c.name, v.name, label) for label, c in enumerate(_subdirs(root)) for v in _subdirs(c)]
    if not entries:
        raise DataError(f"{root}: no <class>/<video>/ frame folders found; run scripts/extract_frames.py first")
    records = _records(root, entries, "frames")
    if not labels:
        records = [VideoRecord(r.path, r.frames) for r in records]
    write_csv(out, records)
    return len(records)


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


def split_csvs(dataset: str, root: Path, splits: Path, split: int, out_dir: Path) -> dict[str, int]:
    """``ucf101`` / ``hmdb51`` commands: write the train/test CSVs; return their row counts."""
    classes, lists = (ucf101_lists if dataset == "ucf101" else hmdb51_lists)(splits, split)
    counts = {}
    for kind, entries in lists.items():
        records = _records(root, entries, f"{dataset} split {split} {kind}")
        write_csv(out_dir / f"{dataset}_{kind}_split{split}.csv", records)
        counts[kind] = len(records)
    (out_dir / f"{dataset}_classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return counts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    frames = commands.add_parser("frames", help="index every FRAMES/<class>/<video>/ folder")
    frames.add_argument("--root", type=Path, required=True, help="frame root holding <class>/<video>/ folders")
    frames.add_argument("--out", type=Path, required=True, help="CSV file to write")
    frames.add_argument("--labels", action="store_true",
                        help="add a label column: index of the class folder in sorted order (default: off)")
    for name, lists in (("ucf101", "classInd.txt, trainlist0K.txt, testlist0K.txt"),
                        ("hmdb51", "<class>_test_splitK.txt files")):
        command = commands.add_parser(name, help=f"train/test CSVs from the official {name} split lists")
        command.add_argument("--root", type=Path, required=True, help="frame root holding <class>/<video>/ folders")
        command.add_argument("--splits", type=Path, required=True, help=f"folder of the official lists ({lists})")
        command.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="split number (default 1)")
        command.add_argument("--out_dir", type=Path, required=True, help="folder for the CSVs (created)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root}: no such frame folder; run scripts/extract_frames.py first", file=sys.stderr)
        return 2
    try:
        if args.command == "frames":
            rows = frames_csv(args.root, args.out, args.labels)
            print(f"{args.out}: {rows} videos")
        else:
            counts = split_csvs(args.command, args.root, args.splits, args.split, args.out_dir)
            print(f"{args.out_dir}: {args.command} split {args.split}: {counts['train']} train, "
                  f"{counts['test']} test videos")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
