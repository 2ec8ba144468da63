"""scripts/make_demo_data.py: layout, CSVs, determinism, atomic no-op rebuild, motion classes."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.index import count_frames, frame_name, read_csv
from datasets.demo import CLASSES, make_demo_data

ROOT = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_csvs(tmp_path):
    out = make_demo_data(tmp_path / "demo", videos=8, frames=12, seed=0)
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == list(CLASSES) and len(classes) == 4
    train = read_csv(out / "train.csv", require_labels=True, num_classes=4)
    test = read_csv(out / "test.csv", require_labels=True, num_classes=4)
    pretrain = read_csv(out / "pretrain.csv")
    assert len(train) + len(test) == len(pretrain) == 8 and len(test) >= 1
    assert {r.path for r in train} | {r.path for r in test} == {r.path for r in pretrain}
    for record in train + test:
        assert record.path.parent.name == classes[record.label] and count_frames(record.path) == record.frames == 12
    assert Image.open(train[0].path / frame_name(0)).size == (80, 64)
    assert not (out / "pretrain.csv").read_text().startswith("/")  # relative paths
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left


def test_deterministic_movable_and_no_op_when_present(tmp_path):
    first = _files(make_demo_data(tmp_path / "a", videos=8, frames=6, seed=3))
    assert _files(make_demo_data(tmp_path / "b", videos=8, frames=6, seed=3)) == first
    assert _files(make_demo_data(tmp_path / "c", videos=8, frames=6, seed=4)) != first
    (tmp_path / "a" / "train.csv").write_text("kept\n")
    make_demo_data(tmp_path / "a", videos=8, frames=6, seed=3)  # exists: left as is
    assert (tmp_path / "a" / "train.csv").read_text() == "kept\n"
    shutil.move(tmp_path / "b", tmp_path / "moved")
    assert len(read_csv(tmp_path / "moved" / "pretrain.csv")) == 8


def _drift(folder: Path, frames: int, axis: int) -> int:
    """Signed shift (pixels/frame along ``axis``, -3..3) that best maps the pixels changing
    between frames t and t+1 onto those changing between t+1 and t+2: the direction of motion."""
    video = np.stack([np.asarray(Image.open(folder / frame_name(i)).convert("L"), np.float32)
                      for i in range(frames)])
    change = np.abs(np.diff(video, axis=0)) > 30  # [F-1, H, W] edges of the moving shapes
    overlap = {d: sum((np.roll(change[t], d, axis=axis) & change[t + 1]).sum() for t in range(frames - 2))
               for d in range(-3, 4)}
    return max(overlap, key=overlap.get)


def test_classes_differ_by_direction_of_motion(tmp_path):
    out = make_demo_data(tmp_path / "demo", videos=16, frames=20, seed=1)
    for record in read_csv(out / "pretrain.csv"):
        dx, dy = CLASSES[record.path.parent.name]
        axis = 1 if dx else 0
        assert np.sign(_drift(record.path, 20, axis)) == dx + dy, record.path.name


def test_cli(tmp_path):
    command = [sys.executable, "scripts/make_demo_data.py", "--out", str(tmp_path / "d"), "--videos", "8",
               "--frames", "5", "--seed", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "built" in result.stdout
    assert len(read_csv(tmp_path / "d" / "train.csv")) + len(read_csv(tmp_path / "d" / "test.csv")) == 8
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already there" in again.stdout
    bad = subprocess.run(command[:3] + [str(tmp_path / "e"), "--videos", "3"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "need >= 8 videos" in bad.stderr


def exit_status(main, argv) -> int:
    """``main(argv)``'s return value, or the status of the exit it raises."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_command_line_builds_the_motion_benchmark(tmp_path, capsys):
    from scripts.make_demo_data import main

    out = tmp_path / "motion"
    assert main(["--kind", "motion", "--out", str(out), "--size", "16", "--frames", "5", "--n_pretrain", "3",
                 "--n_train", "4", "--n_test", "2", "--classes", "2", "--workers", "2"]) == 0
    assert "built" in capsys.readouterr().out
    assert [len(read_csv(out / f"{split}.csv")) for split in ("pretrain", "train", "test")] == [3, 4, 2]
    assert {r.label for r in read_csv(out / "train.csv", require_labels=True)} == {0, 1}
    assert all(r.frames == 5 for r in read_csv(out / "pretrain.csv"))
    assert exit_status(main, ["--kind", "motion", "--out", str(tmp_path / "bad"), "--classes", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert exit_status(main, ["--kind", "motion", "--out", str(tmp_path / "bad"), "--workers", "0"]) == 2
    assert capsys.readouterr().err == "error: workers=0: need at least 1 process\n"
    assert not (tmp_path / "bad").exists()
    # the shared-appearance control is marked on disk; asking for the other one in its folder is an error
    flags = ["--kind", "motion", "--size", "16", "--frames", "4", "--n_pretrain", "1", "--n_train", "2", "--n_test",
             "2", "--classes", "2"]
    assert main([*flags, "--out", str(tmp_path / "control"), "--shared_appearance"]) == 0
    assert (tmp_path / "control" / "SHARED_APPEARANCE").is_file() and not (out / "SHARED_APPEARANCE").exists()
    capsys.readouterr()
    assert exit_status(main, [*flags, "--out", str(tmp_path / "control")]) == 2
    assert "already holds the shared-appearance control" in capsys.readouterr().err
    assert exit_status(main, [*flags, "--out", str(out), "--shared_appearance"]) == 2
    assert "already holds the benchmark" in capsys.readouterr().err
    assert main([*flags, "--out", str(tmp_path / "control"), "--shared_appearance"]) == 0  # the same again: a no-op
