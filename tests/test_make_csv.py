"""scripts/make_csv.py: frame-folder and video-file indexes, official UCF-101 / HMDB-51 split lists."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from datasets.index import DataError, VideoRecord, frame_name, read_csv
from scripts.make_csv import hmdb51_lists, main, ucf101_lists
from tests.synthetic_video import audio_only, encode, sequential_decode, textured_frames

ROOT = Path(__file__).resolve().parents[1]


def _frames(root: Path, class_name: str, video: str, count: int) -> Path:
    folder = root / class_name / video
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (4, 4)).save(folder / frame_name(i))
    return folder


def test_frames_command_with_labels_and_odd_names(tmp_path, capsys):
    root = tmp_path / "frames"
    a = _frames(root, "b_walk", "v[1] x", 3)
    b = _frames(root, "a [run]", "vidéo 2", 5)
    _frames(root, "a [run]", "empty", 0)
    _frames(root, "b_walk", ".v2.partial", 2)  # unfinished extraction: ignored
    assert main(["frames", "--root", str(root), "--out", str(tmp_path / "all.csv"), "--labels"]) == 0
    assert read_csv(tmp_path / "all.csv", require_labels=True) == [VideoRecord(b, 5, 0), VideoRecord(a, 3, 1)]
    err = capsys.readouterr().err
    assert "frames: 1 videos without frames" in err and "a [run]/empty" in err
    assert main(["frames", "--root", str(root), "--out", str(tmp_path / "p.csv")]) == 0
    assert read_csv(tmp_path / "p.csv") == [VideoRecord(b, 5), VideoRecord(a, 3)]


def _ucf_lists(splits: Path):
    splits.mkdir()
    # classInd order is not sorted order; official files use CRLF line ends
    (splits / "classInd.txt").write_bytes(b"1 Zumba\r\n2 Apply [Eye]\r\n3 Bike\r\n")
    (splits / "trainlist01.txt").write_bytes(
        b"Zumba/v_Zumba_g01_c01.avi 1\r\nApply [Eye]/v_A_g02_c01.avi 2\r\nBike/v_gone.avi 3\r\n")
    (splits / "testlist01.txt").write_bytes(b"Bike/v_Bike_g01_c01.avi\r\n\r\n")


def test_ucf101_split_csvs(tmp_path, capsys):
    root, splits, out = tmp_path / "frames", tmp_path / "lists", tmp_path / "csv"
    zumba = _frames(root, "Zumba", "v_Zumba_g01_c01", 4)
    apply = _frames(root, "Apply [Eye]", "v_A_g02_c01", 6)
    bike = _frames(root, "Bike", "v_Bike_g01_c01", 2)
    _ucf_lists(splits)
    assert main(["ucf101", "--root", str(root), "--splits", str(splits), "--split", "1",
                 "--out_dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 videos without frames" in err and "Bike/v_gone" in err  # reported, not silent
    assert read_csv(out / "ucf101_train_split1.csv", num_classes=3) == [VideoRecord(zumba, 4, 0),
                                                                       VideoRecord(apply, 6, 1)]
    assert read_csv(out / "ucf101_test_split1.csv", num_classes=3) == [VideoRecord(bike, 2, 2)]
    assert (out / "ucf101_classes.txt").read_text().splitlines() == ["Zumba", "Apply [Eye]", "Bike"]


def test_ucf101_list_errors(tmp_path):
    _ucf_lists(tmp_path / "l")
    (tmp_path / "l" / "trainlist01.txt").write_text("Zumba/v_Zumba_g01_c01.avi 2\n")
    with pytest.raises(DataError, match=r"trainlist01.txt, line 1: label '2' does not match"):
        ucf101_lists(tmp_path / "l", 1)
    (tmp_path / "l" / "trainlist01.txt").write_text("Nope/v.avi 1\n")
    with pytest.raises(DataError, match="line 1"):
        ucf101_lists(tmp_path / "l", 1)
    with pytest.raises(DataError, match="trainlist02.txt: no such split file"):
        ucf101_lists(tmp_path / "l", 2)


def test_hmdb51_split_csvs(tmp_path, capsys):
    root, splits, out = tmp_path / "frames", tmp_path / "splits", tmp_path / "csv"
    splits.mkdir()
    (splits / "wave_test_split1.txt").write_text("[Hey]_wave_f_1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    (splits / "brush_hair_test_split1.txt").write_text("b 1.avi 2\nb2.avi 1\n")
    (splits / "wave_test_split2.txt").write_text("w3.avi 1\n")  # another split: ignored
    wave1 = _frames(root, "wave", "[Hey]_wave_f_1", 3)
    wave2 = _frames(root, "wave", "w2", 4)
    _frames(root, "wave", "w3", 4)
    brush1 = _frames(root, "brush_hair", "b 1", 5)
    assert main(["hmdb51", "--root", str(root), "--splits", str(splits), "--out_dir", str(out)]) == 0
    assert "hmdb51 split 1 train: 1 videos without frames" in capsys.readouterr().err  # b2 missing
    assert read_csv(out / "hmdb51_train_split1.csv") == [VideoRecord(wave1, 3, 1)]
    assert read_csv(out / "hmdb51_test_split1.csv") == [VideoRecord(brush1, 5, 0), VideoRecord(wave2, 4, 1)]
    (splits / "wave_test_split1.txt").write_text("w.avi 3\n")
    with pytest.raises(DataError, match=r"wave_test_split1.txt, line 1: expected '<video>.avi <0\|1\|2>'"):
        hmdb51_lists(splits, 1)


def test_cli_errors_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "scripts/make_csv.py", "frames", "--root", str(tmp_path / "none"),
                             "--out", str(tmp_path / "x.csv")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "none: no such folder; run scripts/extract_frames.py" in result.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        main(["hmdb51", "--root", str(tmp_path / "empty"), "--splits", str(tmp_path / "empty"),
              "--out_dir", str(tmp_path / "o")])
    assert info.value.code == 2


def _junk_and_audio(folder: Path) -> tuple[Path, Path]:
    """A file that is no video, and a Matroska file with only an audio stream."""
    folder.mkdir(parents=True, exist_ok=True)
    junk = folder / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 40)
    audio = audio_only(folder / "sound.mkv")
    return junk, audio


def test_videos_command_counts_by_decoding_in_parallel_and_reports_bad_files(tmp_path):
    root = tmp_path / "videos"
    a = encode(root / "b_walk" / "v[1] x.mkv", textured_frames(13))  # Matroska: no count in the header
    b = encode(root / "a [run]" / "vidéo.mp4", textured_frames(21))
    c = encode(root / "a [run]" / "c.avi", textured_frames(8), codec="mpeg4")
    (root / "a [run]" / "notes.txt").write_text("not a video: ignored")
    junk, audio = _junk_and_audio(root / "b_walk")
    out = tmp_path / "csv" / "all.csv"
    result = subprocess.run([sys.executable, "scripts/make_csv.py", "videos", "--root", str(root), "--out", str(out),
                             "--labels", "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"failed: {junk}: cannot open it" in result.stderr
    assert f"failed: {audio}: it has no video stream" in result.stderr
    assert "2 unreadable videos were left out" in result.stderr and "count frames" in result.stderr  # tqdm bar
    assert read_csv(out, require_labels=True) == [VideoRecord(c, 8, 0), VideoRecord(b, 21, 0), VideoRecord(a, 13, 1)]
    assert [len(sequential_decode(v)) for v in (c, b, a)] == [8, 21, 13]
    assert sorted(p.name for p in out.parent.iterdir()) == ["all.csv"]  # written via a temp file
    junk.unlink(), audio.unlink()
    assert main(["videos", "--root", str(root), "--out", str(tmp_path / "p.csv"), "--workers", "1"]) == 0
    assert read_csv(tmp_path / "p.csv") == [VideoRecord(c, 8), VideoRecord(b, 21), VideoRecord(a, 13)]
    with pytest.raises(SystemExit) as info:  # no videos
        main(["videos", "--root", str(tmp_path / "csv"), "--out", str(tmp_path / "q.csv")])
    assert info.value.code == 2


def test_ucf101_from_videos_detected_mixed_or_forced(tmp_path, capsys):
    root, splits, out = tmp_path / "root", tmp_path / "lists", tmp_path / "csv"
    _ucf_lists(splits)
    zumba = encode(root / "Zumba" / "v_Zumba_g01_c01.avi", textured_frames(9), codec="mpeg4")
    apply = _frames(root, "Apply [Eye]", "v_A_g02_c01", 6)  # this one has a frame folder
    apply_video = encode(root / "Apply [Eye]" / "v_A_g02_c01.AVI", textured_frames(7), codec="mpeg4")
    bike = encode(root / "Bike" / "v_Bike_g01_c01.mp4", textured_frames(5))  # transcoded: other extension
    _junk_and_audio(root / "Bike")[0].rename(root / "Bike" / "v_gone.avi")  # listed, unreadable
    assert main(["ucf101", "--root", str(root), "--splits", str(splits), "--out_dir", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert f"failed: {root / 'Bike' / 'v_gone.avi'}: cannot open it" in err
    assert read_csv(out / "ucf101_train_split1.csv", num_classes=3) == [VideoRecord(zumba, 9, 0),
                                                                       VideoRecord(apply, 6, 1)]
    assert read_csv(out / "ucf101_test_split1.csv", num_classes=3) == [VideoRecord(bike, 5, 2)]
    (root / "Bike" / "v_gone.avi").unlink()
    assert main(["ucf101", "--root", str(root), "--splits", str(splits), "--out_dir", str(out), "--videos",
                 "--workers", "1"]) == 0
    assert "1 videos without frames" in capsys.readouterr().err  # v_gone: now neither folder nor file
    assert read_csv(out / "ucf101_train_split1.csv", num_classes=3) == [VideoRecord(zumba, 9, 0),
                                                                       VideoRecord(apply_video, 7, 1)]


def test_hmdb51_from_videos(tmp_path):
    root, splits, out = tmp_path / "videos", tmp_path / "splits", tmp_path / "csv"
    splits.mkdir()
    (splits / "wave_test_split1.txt").write_text("[Hey]_wave_f_1.avi 1 \nw2.avi 2 \n")
    (splits / "brush_hair_test_split1.txt").write_text("b 1.avi 2\n")
    wave1 = encode(root / "wave" / "[Hey]_wave_f_1.avi", textured_frames(6), codec="mpeg4")
    wave2 = encode(root / "wave" / "w2.avi", textured_frames(4), codec="mpeg4")
    brush = encode(root / "brush_hair" / "b 1.avi", textured_frames(5), codec="mpeg4")
    assert main(["hmdb51", "--root", str(root), "--splits", str(splits), "--out_dir", str(out), "--workers", "2"]) == 0
    assert read_csv(out / "hmdb51_train_split1.csv") == [VideoRecord(wave1, 6, 1)]
    assert read_csv(out / "hmdb51_test_split1.csv") == [VideoRecord(brush, 5, 0), VideoRecord(wave2, 4, 1)]
