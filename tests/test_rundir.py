"""Tests of engine.rundir: one run per output folder, stale temporary checkpoints removed, no silent mixing."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.rundir import (OutDirError, OutDirLock, RunFiles, check_out_dir, claim_out_dir, remove_run_outputs,
                           run_outputs)

ROOT = Path(__file__).resolve().parents[1]

# a checkpoint write killed half-way, as SIGKILL during torch.save leaves it
KILLED_WRITE = """
import os, signal, sys
from engine.files import atomic_write
with atomic_write(sys.argv[1], "wb") as f:
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_claim_removes_temporaries_of_killed_writes_and_keeps_everything_else(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(tmp_path / "last.pth")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == -9
    (tmp_path / "epoch_0000.pth").write_bytes(b"weights")
    (tmp_path / ".last.pth.4242.link.tmp").write_bytes(b"a link_checkpoint left behind")
    (tmp_path / ".notes.txt.abcd1234.tmp").write_bytes(b"not a checkpoint: not ours to remove")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".last.pth."))
    assert len(left) == 2 and any(name.endswith(".link.tmp") for name in left)  # the killed write's and the link's

    lock, notes = claim_out_dir(tmp_path, resume=False, overwrite=True)
    try:
        assert len(notes) == 2 and all("removed" in note and ".last.pth." in note for note in notes)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".notes.txt.abcd1234.tmp", "epoch_0000.pth"]
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    finally:
        lock.release()


def test_a_folder_in_use_is_refused_until_its_run_ends(tmp_path):
    first = OutDirLock(tmp_path)
    with pytest.raises(OutDirError, match=rf"in use by another run \(process {os.getpid()} holds"):
        claim_out_dir(tmp_path, resume=True, overwrite=False)
    first.release()
    lock, _ = claim_out_dir(tmp_path, resume=True, overwrite=False)
    lock.release()


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    for name in ("last.pth", "epoch_0003.pth", "log.jsonl", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events").write_text("x")
    with pytest.raises(OutDirError, match=r"already holds a run \(epoch_0003.pth, last.pth, log.jsonl, notes.txt "
                                          r"and 1 more\): continue it with --resume auto.*--overwrite"):
        claim_out_dir(tmp_path, resume=False, overwrite=False)
    assert not (tmp_path / ".lock").exists()  # refused before anything is created
    lock, _ = claim_out_dir(tmp_path, resume=False, overwrite=True)
    lock.release()
    assert remove_run_outputs(tmp_path) == ["epoch_0003.pth", "last.pth", "log.jsonl", "tensorboard"]
    assert run_outputs(tmp_path) == ["notes.txt"]  # not a run output: kept


def test_an_empty_or_missing_folder_is_claimed(tmp_path):
    lock, notes = claim_out_dir(tmp_path / "new", resume=False, overwrite=False)
    lock.release()
    assert notes == [] and run_outputs(tmp_path / "new") == []
    lock, _ = claim_out_dir(tmp_path / "new", resume=False, overwrite=False)  # the lock file alone is no run
    lock.release()


def test_the_lock_file_is_removed_when_the_run_ends(tmp_path):
    lock, _ = claim_out_dir(tmp_path, resume=False, overwrite=False)
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()
    assert not (tmp_path / ".lock").exists()
    lock.release()  # twice: nothing more


def test_a_process_that_locked_a_deleted_lock_file_tries_again(tmp_path, monkeypatch):
    """The race the deletion opens: B opens .lock, A deletes it and lets go, B locks the deleted file."""
    first = OutDirLock(tmp_path)
    opened = []
    real_open = open

    def open_then_release_first(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        opened.append(path)
        if len(opened) == 1:
            first.release()  # between this open and the flock: the old file goes, its lock with it
        return handle

    monkeypatch.setattr("builtins.open", open_then_release_first)
    second = OutDirLock(tmp_path)
    monkeypatch.undo()
    assert len(opened) == 2  # the deleted file was locked, noticed, and the new one locked instead
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(OutDirError, match="in use by another run"):
        OutDirLock(tmp_path)  # the new file is really held
    second.release()


def test_resume_without_a_checkpoint_removes_the_leftovers_of_a_run_that_saved_nothing(tmp_path):
    (tmp_path / "log.jsonl").write_text("{}\n")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutDirError, match="already holds a run"):
        claim_out_dir(tmp_path, resume=False, overwrite=False)
    lock, notes = claim_out_dir(tmp_path, resume=True, overwrite=False)
    lock.release()
    assert notes == [f"--resume: no {tmp_path / 'last.pth'} to continue from; removed log.jsonl, tensorboard, left by "
                     "a run that stopped before its first checkpoint, and starting from the beginning"]
    assert run_outputs(tmp_path) == ["notes.txt"]


def test_resume_without_a_checkpoint_keeps_what_a_run_saved(tmp_path):
    (tmp_path / "epoch_0000.pth").write_text("weights")
    (tmp_path / "log.jsonl").write_text("{}\n")
    with pytest.raises(OutDirError, match=r"--resume: --out_dir \S+ holds epoch_0000.pth but no last.pth to continue "
                                          r"from; start the run again with --overwrite"):
        claim_out_dir(tmp_path, resume=True, overwrite=False)
    assert run_outputs(tmp_path) == ["epoch_0000.pth", "log.jsonl"] and not (tmp_path / ".lock").exists()
    (tmp_path / "last.pth").write_text("state")  # with a checkpoint: a plain resume, nothing removed
    lock, notes = claim_out_dir(tmp_path, resume=True, overwrite=False)
    lock.release()
    assert notes == [] and run_outputs(tmp_path) == ["epoch_0000.pth", "last.pth", "log.jsonl"]


def test_other_run_files_are_described_by_the_caller(tmp_path):
    files = RunFiles(names=("last.pth", "best.pth", "results.json", "log.jsonl", "tensorboard"), pattern=None,
                     early=("best.pth", "log.jsonl", "tensorboard"), shared=r"features_\d+\.pt")
    (tmp_path / "features_0123.pt").write_text("a cache for the next run")
    lock, _ = claim_out_dir(tmp_path, resume=False, overwrite=False, files=files)  # a shared file is no run
    lock.release()
    with pytest.raises(OutDirError, match="already holds a run"):
        claim_out_dir(tmp_path, resume=False, overwrite=False)  # for another kind of run it is
    for name in ("best.pth", "log.jsonl", "epoch_0000.pth"):
        (tmp_path / name).write_text("x")
    lock, notes = claim_out_dir(tmp_path, resume=True, overwrite=False, files=files)
    lock.release()
    assert "removed best.pth, log.jsonl" in notes[0]
    assert run_outputs(tmp_path) == ["epoch_0000.pth", "features_0123.pt"]  # not this kind of run's: kept
    (tmp_path / "results.json").write_text("{}")
    assert remove_run_outputs(tmp_path, files) == ["results.json"]


def test_an_out_dir_that_cannot_be_a_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutDirError, match=rf"^--out_dir {re.escape(str(tmp_path / 'file'))} is a file, not a folder"):
        claim_out_dir(tmp_path / "file", resume=False, overwrite=False)
    with pytest.raises(OutDirError, match=r"cannot create it, \S+file is a file"):
        claim_out_dir(tmp_path / "file" / "run", resume=False, overwrite=False)
    with pytest.raises(OutDirError, match=r"^--out \S+ is a file"):
        check_out_dir(tmp_path / "file", flag="--out")


def test_a_read_only_out_dir_is_one_line(tmp_path, monkeypatch):
    """A folder this process may not write in (as a read-only disk or another user's folder would be; faked
    through os.access, since root writes in read-only folders anyway)."""
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == tmp_path / "ro" else real(path, mode))
    with pytest.raises(OutDirError, match=r"cannot write in the folder \S+ro \(permission denied"):
        claim_out_dir(tmp_path / "ro" / "run", resume=False, overwrite=False)
    with pytest.raises(OutDirError, match=r"--out_dir \S+ro: cannot write in it \(permission denied"):
        claim_out_dir(tmp_path / "ro", resume=False, overwrite=False)
    assert not (tmp_path / "ro" / "run").exists()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a folder nobody may create entries in")
def test_a_folder_that_cannot_be_created_names_the_reason():
    with pytest.raises(OutDirError, match=r"^--out_dir /sys/mfo-test-run: cannot create or write in this folder "
                                          r"\(.+\); pick another --out_dir"):
        OutDirLock("/sys/mfo-test-run")
