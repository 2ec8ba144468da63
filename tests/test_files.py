"""engine.files: atomic writes keep the old file on failure and give new files the umask's permissions."""
import os
import stat

import pytest

from engine.files import atomic_dir, atomic_write, default_mode, make_temp_dir


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_and_folders_follow_the_umask(tmp_path, umask_027):
    assert default_mode() == 0o640 and default_mode(directory=True) == 0o750
    with atomic_write(tmp_path / "out.txt", "w") as f:
        f.write("hello")
    assert (tmp_path / "out.txt").read_text() == "hello"
    assert mode(tmp_path / "out.txt") == 0o640  # mkstemp alone gives 0o600
    folder = make_temp_dir(tmp_path / "final")
    assert folder.parent == tmp_path and folder.name.startswith(".final.partial-")
    assert mode(folder) == 0o750  # mkdtemp alone gives 0o700


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as f:
            f.write("half of the new content")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_binary_write_replaces_and_creates_the_folder(tmp_path):
    target = tmp_path / "a" / "b" / "x.bin"
    with atomic_write(target) as f:
        f.write(b"\x00\x01")
    with atomic_write(target) as f:
        f.write(b"\x02")
    assert target.read_bytes() == b"\x02"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


def test_atomic_dir_renames_on_success_and_removes_on_failure(tmp_path):
    with atomic_dir(tmp_path / "built") as tmp:
        (tmp / "a.txt").write_text("x")
        assert not (tmp_path / "built").exists()  # nothing under the final name before the end
    assert (tmp_path / "built" / "a.txt").read_text() == "x"
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "broken") as tmp:
            (tmp / "half").write_text("y")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built"]
    with atomic_dir(tmp_path / "built") as tmp:  # another process got there first: its folder is kept
        (tmp / "b.txt").write_text("z")
    assert sorted(p.name for p in (tmp_path / "built").iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built"]
