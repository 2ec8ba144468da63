"""Tests of engine.rundir: one run per output folder, stale temporary checkpoints removed, no silent mixing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.rundir import OutDirError, OutDirLock, claim_out_dir, remove_run_outputs, run_outputs

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

    lock, notes = claim_out_dir(tmp_path, resume=True, overwrite=False)
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
