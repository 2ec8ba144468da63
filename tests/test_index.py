"""datasets.index: CSV reading, validation errors and atomic writing."""

import re

import pytest
from PIL import Image

from datasets.index import (DataError, VideoRecord, count_frames, find_videos, frame_name, is_video_file, read_csv,
                            write_csv)


FRAMES = 40  # frames in each folder of the fixture; rows may say fewer


def make_frames(folder, count: int) -> None:
    """``count`` empty frame files: the index only reads their names."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / frame_name(i)).touch()


@pytest.fixture()
def folders(tmp_path):
    """Two frame folders of FRAMES frames (one with awkward characters) next to where the CSVs go."""
    a = tmp_path / "frames" / "walk" / "v1"
    b = tmp_path / "frames" / "[odd] clàss, x" / "v 2"
    make_frames(a, FRAMES)
    make_frames(b, FRAMES)
    return a, b


def test_relative_paths_resolve_against_the_csv_folder(tmp_path, folders, monkeypatch):
    a, b = folders
    csv_file = tmp_path / "index.csv"
    csv_file.write_text(f'frames/walk/v1,12,0\n"{b}",40,2\n', encoding="utf-8")
    monkeypatch.chdir(a)  # the working folder must not matter
    records = read_csv(csv_file, require_labels=True, num_classes=3)
    assert records == [VideoRecord(tmp_path / "frames/walk/v1", 12, 0), VideoRecord(b, 40, 2)]


def test_a_byte_order_mark_is_not_part_of_the_first_path(tmp_path, folders):
    a, _ = folders
    csv_file = tmp_path / "excel.csv"
    csv_file.write_text("frames/walk/v1,12,0\r\n", encoding="utf-8-sig")  # as Excel saves 'CSV UTF-8'
    assert csv_file.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert read_csv(csv_file, require_labels=True) == [VideoRecord(tmp_path / "frames/walk/v1", 12, 0)]


def test_write_then_read_round_trip_relative(tmp_path, folders):
    a, b = folders
    rows = [VideoRecord(a, 5, 1), VideoRecord(b, 7, 0)]
    write_csv(tmp_path / "out" / "x.csv", rows, relative_to=tmp_path / "out")
    text = (tmp_path / "out" / "x.csv").read_text(encoding="utf-8")
    assert text.startswith("../frames/walk/v1,5,1\n")
    assert read_csv(tmp_path / "out" / "x.csv") == [VideoRecord(a.resolve(), 5, 1), VideoRecord(b.resolve(), 7, 0)]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.csv"]  # no temp file left


def test_two_columns_without_labels(tmp_path, folders):
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(f'{folders[0]},9\n\n"{folders[1]}",3\n')
    assert read_csv(csv_file) == [VideoRecord(folders[0], 9), VideoRecord(folders[1], 3)]


@pytest.mark.parametrize("text, kwargs, needle", [
    ("{a},9,0,1\n", {}, "line 1: 4 columns"),
    ("{a},9\n", {"require_labels": True}, "line 1: 2 columns, expected 3"),
    ("{a},9\n{a},9,1\n", {}, "line 2: 3 columns, but the first row has 2"),
    ("{a},9\n{a},nine\n", {}, "line 2: frame count 'nine' is not an integer"),
    ("{a},0\n", {}, "line 1: frame count 0 is not positive"),
    ("{a},9,3\n", {"num_classes": 3}, "line 1: label 3 out of range, expected [0, 3)"),
    ("{a},9,-1\n", {}, "line 1: label -1 out of range"),
    ("{a},9,x\n", {}, "line 1: label 'x' is not an integer"),
    ("{a},9\nmissing/dir,9\n", {}, "line 2: frame folder"),
    ("{a},9\n{a},41\n", {}, "line 2: the row says 41 frames, but the frame folder {a} holds 40; the CSV is out of "
                          "date: re-run scripts/make_csv.py, which recounts every folder"),
    ("\n", {}, "no rows"),
])
def test_errors_name_file_line_and_problem(tmp_path, folders, text, kwargs, needle):
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text(text.format(a=folders[0]))
    with pytest.raises(DataError) as error:
        read_csv(csv_file, **kwargs)
    assert str(csv_file) in str(error.value)
    assert needle.format(a=folders[0]) in str(error.value)


def test_frame_counts_are_checked_against_the_folder_once_per_row(tmp_path):
    """A row may say fewer frames than its folder holds, not more. The folder's count in the message is that
    of consecutive frames from image_00001.jpg, as make_csv.py counts; a gap below the row's last frame is
    left to the decoder (the row's last frame is there)."""
    folder = tmp_path / "v"
    make_frames(folder, 24)
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("v,24\nv,20\n")
    assert read_csv(csv_file) == [VideoRecord(folder, 24), VideoRecord(folder, 20)]
    (folder / frame_name(9)).unlink()  # image_00010.jpg: 9 consecutive frames, then 14 more
    csv_file.write_text("v,12\nv,25\n")
    with pytest.raises(DataError, match=re.escape(f"{csv_file}, line 2: the row says 25 frames, but the frame "
                                                  f"folder {folder} holds 9; the CSV is out of date: re-run "
                                                  "scripts/make_csv.py")):
        read_csv(csv_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    csv_file.write_text("empty,1,0\n")
    with pytest.raises(DataError, match=r"line 1: the row says 1 frames, but the frame folder .*empty holds 0"):
        read_csv(csv_file, require_labels=True)
    assert read_csv(csv_file, check_folders=False) == [VideoRecord(empty, 1, 0)]  # the opt-out skips the count


def test_missing_csv_and_unchecked_folders(tmp_path):
    with pytest.raises(DataError, match="no such CSV file"):
        read_csv(tmp_path / "nope.csv")
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("gone,4\n")
    assert read_csv(csv_file, check_folders=False) == [VideoRecord(tmp_path / "gone", 4)]


def test_frame_name_and_count_with_bracket_names(tmp_path):
    folder = tmp_path / "[a] b" / "v[1]"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / frame_name(i))
    (folder / frame_name(4)).write_bytes(b"")  # after a gap: not counted
    (folder / "notes.txt").write_text("x")
    assert frame_name(0) == "image_00001.jpg" and frame_name(123) == "image_00124.jpg"
    assert count_frames(folder) == 3


def test_video_file_rows(tmp_path, folders):
    (tmp_path / "clip.MP4").write_bytes(b"")  # only the name matters here; decoding is datasets.videos'
    make_frames(tmp_path / "frames" / "odd.avi", 4)  # a folder named like a video stays a frame folder
    csv_file = tmp_path / "m.csv"
    csv_file.write_text(f"clip.MP4,30\n{folders[0]},9\nframes/odd.avi,4\n")  # a video's count is not checked
    assert read_csv(csv_file) == [VideoRecord(tmp_path / "clip.MP4", 30), VideoRecord(folders[0], 9),
                                  VideoRecord(tmp_path / "frames" / "odd.avi", 4)]
    assert [is_video_file(r.path) for r in read_csv(csv_file)] == [True, False, False]
    csv_file.write_text("clip.MP4,30\ngone.webm,9\n")
    with pytest.raises(DataError, match=r"line 2: video file .*gone.webm does not exist"):
        read_csv(csv_file)
    (tmp_path / "notes.txt").write_text("x")
    csv_file.write_text("notes.txt,9\n")
    with pytest.raises(DataError, match="line 1: frame folder"):
        read_csv(csv_file)


def test_find_videos(tmp_path):
    for name in ["b/x.mp4", "b/y.WEBM", "a [1]/z.avi", "a [1]/notes.txt", ".hidden/h.mp4", "a [1]/w.mkv"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [(v.relative_to(tmp_path).as_posix(), c, n) for v, c, n in find_videos(tmp_path)] == [
        ("a [1]/w.mkv", "a [1]", "w"), ("a [1]/z.avi", "a [1]", "z"), ("b/x.mp4", "b", "x"), ("b/y.WEBM", "b", "y")]
