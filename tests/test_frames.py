"""datasets.frames: naming, counting, decoding each frame once, reduced-size decode, errors."""

import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import frames as frames_module
from datasets.frames import FrameDecodeError, decode_size, frame_size, iter_frames, read_frames
from datasets.index import frame_name


def _folder(root, levels, size=(64, 48)):
    """A frame folder whose frame i is a solid grey of level ``levels[i]``."""
    root.mkdir(parents=True)
    for i, level in enumerate(levels):
        Image.new("RGB", size, (level,) * 3).save(root / frame_name(i), quality=95)
    return root


def test_read_frames_order_repeats_and_single_decode(tmp_path, monkeypatch):
    levels = [10, 60, 110, 160, 210]
    folder = _folder(tmp_path / "v", levels)
    calls = []
    decode = frames_module._decode
    monkeypatch.setattr(frames_module, "_decode", lambda path, need: calls.append(path.name) or decode(path, need))
    indices = [4, 1, 1, 3, 4, 0]
    out = read_frames(folder, indices)
    assert out.shape == (6, 48, 64, 3) and str(out.dtype) == "torch.uint8"
    means = out.float().mean(dim=(1, 2, 3)).tolist()
    assert means == pytest.approx([levels[i] for i in indices], abs=2)
    assert sorted(calls) == sorted(frame_name(i) for i in {4, 1, 3, 0})  # each file once


def test_reduced_size_decode_keeps_the_needed_pixels(tmp_path):
    folder = _folder(tmp_path / "v", [100], size=(320, 240))
    assert read_frames(folder, [0], need=(80, 60)).shape == (1, 60, 80, 3)  # 1/4 scale
    assert read_frames(folder, [0], need=(81, 60)).shape == (1, 120, 160, 3)  # 1/4 would be too small
    assert read_frames(folder, [0], need=(200, 150)).shape == (1, 240, 320, 3)
    assert read_frames(folder, [0]).shape == (1, 240, 320, 3)
    assert frame_size(folder) == (320, 240)


def test_decode_size_is_the_widest_requirement():
    boxes = [(0.0, 0.0, 0.5, 1.0), (0.1, 0.2, 0.9, 0.45)]
    # size / box width and size / box height, maximised over the boxes, rounded up
    assert decode_size(boxes, 112) == (224, 448)


def test_decode_errors_name_the_file(tmp_path):
    folder = _folder(tmp_path / "v", [10, 20])
    (folder / frame_name(1)).write_bytes(b"not a jpeg")
    with pytest.raises(FrameDecodeError) as error:
        read_frames(folder, [0, 1])
    assert error.value.path == folder / frame_name(1)
    assert str(folder / frame_name(1)) in str(error.value) and "re-extract" in str(error.value)
    with pytest.raises(FrameDecodeError) as error:
        read_frames(folder, [7])
    assert error.value.path == folder / frame_name(7)
    data = (folder / frame_name(0)).read_bytes()
    (folder / frame_name(0)).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(FrameDecodeError):
        read_frames(folder, [0])


def test_frames_of_different_sizes_are_an_error(tmp_path):
    folder = _folder(tmp_path / "v", [10])
    Image.new("RGB", (32, 48)).save(folder / frame_name(1))
    with pytest.raises(FrameDecodeError, match="differs from the first frame"):
        read_frames(folder, [0, 1])


def test_full_size_decode_matches_pil_and_falls_back_to_pil(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "v"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / frame_name(0), quality=90)
    Image.new("L", (64, 48), 77).save(folder / frame_name(1), quality=90)  # grey JPEG -> RGB
    Image.new("RGB", (64, 48), (1, 2, 3)).save(folder / frame_name(2), format="PNG")  # not a JPEG
    out = read_frames(folder, [0, 1, 2])  # torchvision's decoder, PIL for the PNG
    for i in range(3):
        with Image.open(folder / frame_name(i)) as image:
            assert np.array_equal(out[i].numpy(), np.asarray(image.convert("RGB")))


def test_iter_frames_keeps_a_frame_only_until_its_last_use(tmp_path):
    folder = _folder(tmp_path / "v", [10, 60, 110])
    frames = iter_frames(folder, [0, 0, 1, 2, 1])
    first, again = next(frames), next(frames)
    assert again is first  # a repeat is the same tensor, decoded once
    rest = list(frames)
    assert rest[0] is rest[2] and rest[1] is not rest[0]
    assert [int(f.float().mean().round()) for f in [first, *rest]] == pytest.approx([10, 60, 110, 60], abs=2)
    frames = iter_frames(folder, [0, 1])
    held = weakref.ref(next(frames))
    next(frames)
    assert held() is None  # frame 0 was not needed again: the iterator let it go


def test_frame_folders_and_the_entry_points_need_no_pyav(tmp_path):
    """A machine without PyAV still trains and evaluates on frame folders: nothing imports ``av`` until a
    video file is read."""
    folder = tmp_path / "v"
    folder.mkdir()
    for t in range(3):
        Image.fromarray(np.full((8, 10, 3), 40 * t, np.uint8)).save(folder / frame_name(t))
    code = (f"import sys; sys.modules['av'] = None\n"  # `import av` now fails
            "import train, eval_linear, finetune, scripts.ablation\n"
            "from visualization import temporal_cam\n"
            "from datasets.frames import frame_size, read_frames\n"
            f"assert frame_size({str(folder)!r}) == (10, 8)\n"
            f"assert [int(f[0, 0, 0]) for f in read_frames({str(folder)!r}, [2, 0])] == [80, 0]\n"
            "assert 'datasets.videos' not in sys.modules\n")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
