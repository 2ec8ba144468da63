"""The output folder of a run: one live run per folder, no stale temporaries, no silent mixing.

A run *claims* its folder before writing anything (:func:`claim_out_dir`):

* it takes an exclusive lock on ``OUT_DIR/.lock`` (``fcntl.flock``; the lock file holds the pid of
  the holder) for as long as it runs, so a second run in the same folder stops at once;
* holding that lock, it knows that no live run is writing into the folder, so every temporary
  checkpoint file left by a killed run (``.<name>.pth.<random>.tmp`` from ``engine.files.atomic_write``,
  ``.<name>.pth.<pid>.link.tmp`` from ``link_checkpoint``) is stale: it is removed and reported.
  The lock, not the file's age or an open-handle scan, is the proof: a slow write of a large
  checkpoint looks old, and open handles of another machine sharing the folder are invisible.
  Where ``fcntl`` is missing (Windows) nothing is locked and temporaries are only listed;
* a folder that already holds a run's outputs is refused unless the run resumes or overwrites
  (:func:`remove_run_outputs`), so two runs never share a ``log.jsonl`` or a TensorBoard folder.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".lock"
# atomic_write: mkstemp's random part; link_checkpoint: the writer's pid then ".link"
TEMPORARY = re.compile(r"^\..+\.pth\.([A-Za-z0-9_]+|\d+\.link)\.tmp$")
RUN_OUTPUTS = ("last.pth", "log.jsonl", "tensorboard")  # plus epoch_NNNN.pth, see remove_run_outputs
EPOCH_FILE = re.compile(r"^epoch_\d+\.pth$")


class OutDirError(RuntimeError):
    """The output folder is in use by another run, or holds a run that this one would mix with."""


class OutDirLock:
    """An exclusive lock on ``out_dir/.lock``, held until :meth:`release` (or the process ends)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+", encoding="utf-8")
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise OutDirError(f"--out_dir {self.path.parent} is in use by another run (process {holder} holds "
                              f"{self.path}); wait for it to end or pick another --out_dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing drops the flock


def stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Temporary checkpoint files in ``out_dir`` (not in sub-folders), sorted."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if TEMPORARY.match(p.name) and p.is_file())


def run_outputs(out_dir: str | os.PathLike) -> list[str]:
    """Names of the entries of ``out_dir`` other than its lock and temporary checkpoint files, sorted."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME and not TEMPORARY.match(p.name))


def claim_out_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> tuple[OutDirLock, list[str]]:
    """Lock ``out_dir`` for this run and remove stale temporary checkpoints; returns the lock and notes.

    Raises ``OutDirError`` when another run holds the folder, or when it already holds a run's
    outputs and neither ``resume`` nor ``overwrite`` is set (checked before anything is created).
    The notes (one line per removed or, without ``fcntl``, left temporary) are for the caller to print.
    """
    existing = run_outputs(out_dir)
    if existing and not (resume or overwrite):
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise OutDirError(f"--out_dir {out_dir} already holds a run ({shown}): continue it with --resume auto, "
                          "start it again with --overwrite (deletes its checkpoints and logs), "
                          "or pick another --out_dir")
    lock = OutDirLock(out_dir)
    notes = []
    for tmp in stale_temporaries(out_dir):
        size = tmp.stat().st_size / 2**20
        if fcntl is None:
            notes.append(f"note: {tmp} ({size:.0f} MiB) looks like the temporary file of an interrupted "
                         "checkpoint write; remove it if no run is writing to this folder")
            continue
        tmp.unlink(missing_ok=True)
        notes.append(f"removed {tmp} ({size:.0f} MiB), the temporary file of a checkpoint write that a "
                     "killed run left behind")
    return lock, notes


def remove_run_outputs(out_dir: str | os.PathLike) -> list[str]:
    """Delete what a training run writes in ``out_dir`` (``last.pth``, ``epoch_NNNN.pth``, ``log.jsonl``,
    ``tensorboard/``); other files are left. Returns the removed names."""
    out_dir = Path(out_dir)
    removed = []
    for name in run_outputs(out_dir):
        path = out_dir / name
        if name in RUN_OUTPUTS or EPOCH_FILE.match(name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(name)
    return removed
