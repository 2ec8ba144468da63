"""scripts/extract_frames.py: round trip on videos encoded here, skipping, failures, CLI."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

from datasets.index import count_frames, frame_name
from scripts.extract_frames import main

ROOT = Path(__file__).resolve().parents[1]


def _encode(path: Path, frames: int, size=(64, 48), codec="mpeg4"):
    """A video whose frame i is a solid grey of level 15 + 20 i."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), 15 + 20 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _levels(folder: Path) -> list[float]:
    return [float(np.asarray(Image.open(folder / frame_name(i))).mean()) for i in range(count_frames(folder))]


def test_round_trip_keeps_count_and_order(tmp_path):
    _encode(tmp_path / "src" / "[x] ça va" / "clip one.mp4", 11)
    _encode(tmp_path / "src" / "walk" / "b.avi", 7)
    assert main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), "--workers", "1"]) == 0
    first = tmp_path / "dst" / "[x] ça va" / "clip one"
    assert np.allclose(_levels(first), [15 + 20 * i for i in range(11)], atol=6)
    assert np.allclose(_levels(tmp_path / "dst" / "walk" / "b"), [15 + 20 * i for i in range(7)], atol=6)
    assert Image.open(first / frame_name(0)).size == (64, 48)
    assert sorted(p.name for p in (tmp_path / "dst" / "walk").iterdir()) == ["b"]  # no temp folder left


def test_short_side_resize(tmp_path):
    _encode(tmp_path / "src" / "c" / "v.webm", 3, size=(64, 48), codec="libvpx")
    assert main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"),
                 "--short_side", "24", "--workers", "1"]) == 0
    assert Image.open(tmp_path / "dst" / "c" / "v" / frame_name(0)).size == (32, 24)
    assert count_frames(tmp_path / "dst" / "c" / "v") == 3


def test_rerun_skips_complete_and_redoes_half_written(tmp_path, capsys):
    _encode(tmp_path / "src" / "c" / "done.mp4", 4)
    _encode(tmp_path / "src" / "c" / "half.mp4", 5)
    done = tmp_path / "dst" / "c" / "done"
    done.mkdir(parents=True)
    (done / "marker").write_text("complete from an earlier run")
    partial = tmp_path / "dst" / "c" / ".half.partial"  # an interrupted run
    partial.mkdir()
    (partial / frame_name(0)).write_bytes(b"junk")
    assert main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), "--workers", "1"]) == 0
    assert "1 already extracted, 1 to do" in capsys.readouterr().out
    assert (done / "marker").exists() and count_frames(done) == 0  # left alone
    assert count_frames(tmp_path / "dst" / "c" / "half") == 5 and not partial.exists()


def test_cli_reports_broken_videos_and_fails_at_the_end(tmp_path):
    _encode(tmp_path / "src" / "c" / "good.mkv", 6)
    (tmp_path / "src" / "c" / "broken.mp4").write_bytes(b"this is not a video")
    (tmp_path / "src" / "c" / "notes.txt").write_text("ignored")
    result = subprocess.run([sys.executable, "scripts/extract_frames.py", "--src", str(tmp_path / "src"),
                             "--dst", str(tmp_path / "dst"), "--workers", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "broken.mp4" in result.stderr and "1 of 2 videos failed" in result.stderr
    assert count_frames(tmp_path / "dst" / "c" / "good") == 6
    assert sorted(p.name for p in (tmp_path / "dst" / "c").iterdir()) == ["good"]
