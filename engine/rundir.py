"""The output folder of a run: one live run per folder, no stale temporaries, no silent mixing.

A run *claims* its folder before writing anything (:func:`claim_out_dir`):

* the folder must be one this process can create and write in (:func:`check_out_dir`): a path that is
  a file, lies under a file or in a folder it cannot write is refused in one line naming the folder
  and the reason;
* it takes an exclusive lock on ``OUT_DIR/.lock`` (``fcntl.flock``; the lock file holds the pid of
  the holder) for as long as it runs, so a second run in the same folder stops at once. The lock file
  is removed when the run ends (:meth:`OutDirLock.release`; a killed run leaves it, harmlessly: the
  kernel drops a dead process's lock and the next run takes it);
* holding that lock, it knows that no live run is writing into the folder, so every temporary
  checkpoint file left by a killed run (``.<name>.pth.<random>.tmp`` from ``engine.files.atomic_write``,
  ``.<name>.pth.<pid>.link.tmp`` from ``link_checkpoint``) is stale: it is removed and reported.
  The lock, not the file's age or an open-handle scan, is the proof: a slow write of a large
  checkpoint looks old, and open handles of another machine sharing the folder are invisible.
  Where ``fcntl`` is missing (Windows) nothing is locked and temporaries are only listed;
* a folder that already holds a run's outputs is refused unless the run resumes or overwrites
  (:func:`remove_run_outputs`), so two runs never share a ``log.jsonl`` or a TensorBoard folder;
* a run that resumes in a folder without a checkpoint to resume from finds at most the *leftovers*
  of a run that stopped before its first checkpoint (``log.jsonl``, ``tensorboard/``: what a run
  writes from its start): they are removed and reported, and the run starts from the beginning.

What a run writes is described by a :class:`RunFiles` (``TRAIN_FILES`` for ``train.py``; the
evaluation tools have their own).
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".lock"
# atomic_write: mkstemp's random part; link_checkpoint: the writer's pid then ".link"
TEMPORARY = re.compile(r"^\..+\.pth\.([A-Za-z0-9_]+|\d+\.link)\.tmp$")
TRACKING = ("args.json", "log.jsonl", "tensorboard")  # what engine.tracking.Tracker writes from a run's start


@dataclass(frozen=True)
class RunFiles:
    """What one kind of run writes into its folder.

    ``names``: its outputs (files or folders); ``pattern``: a regular expression for more of them
    (e.g. epoch files); ``checkpoint``: the file a resume continues from; ``early``: the outputs that
    can exist before that checkpoint does, which a resume without a checkpoint removes as leftovers;
    ``shared``: a regular expression for files that outlive runs and are no sign of one (e.g. caches
    meant for the next run in the folder).
    """

    names: tuple[str, ...] = ("last.pth", *TRACKING)
    pattern: str | None = r"epoch_\d+\.pth"
    checkpoint: str = "last.pth"
    early: tuple[str, ...] = TRACKING
    shared: str | None = None

    def owns(self, name: str) -> bool:
        """Whether ``name`` (an entry of the folder) is one of these outputs."""
        return name in self.names or (self.pattern is not None and re.fullmatch(self.pattern, name) is not None)

    def marks_a_run(self, name: str) -> bool:
        """Whether an entry ``name`` shows that the folder holds a run (anything but ``shared`` files)."""
        return self.shared is None or re.fullmatch(self.shared, name) is None


TRAIN_FILES = RunFiles()


class OutDirError(UserError, RuntimeError):
    """The output folder cannot be written, is in use by another run, or holds a run this one would mix with."""


def check_out_dir(out_dir: str | os.PathLike, flag: str = "--out_dir") -> None:
    """Refuse, before anything is written, an ``out_dir`` this process cannot make or write in.

    Raises :class:`OutDirError` naming the folder and the reason when ``out_dir`` is a file, when the
    nearest existing folder on its path is a file, or when that folder is not writable. (The creation
    itself can still fail, e.g. on a full disk: :class:`OutDirLock` reports that the same way.)"""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise OutDirError(f"{flag} {out_dir} is a file, not a folder; pick another {flag}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutDirError(f"{flag} {out_dir}: cannot create it, {existing} is a file; pick another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "it" if existing == path else f"the folder {existing}"
        raise OutDirError(f"{flag} {out_dir}: cannot write in {what} (permission denied or a read-only disk); "
                          f"pick another {flag}")


def _cannot(out_dir: Path, error: OSError) -> OutDirError:
    return OutDirError(f"--out_dir {out_dir}: cannot create or write in this folder ({error.strerror or error}); "
                       "pick another --out_dir")


class OutDirLock:
    """An exclusive lock on ``out_dir/.lock``, held until :meth:`release` (or the process ends).

    :meth:`release` deletes the lock file while it still holds the lock, then lets go. A process that
    opened the old file before the deletion can lock it only afterwards, so after locking, each
    process checks that the path still names the file it locked, and otherwise tries again with the
    file now there. The process holding a lock on the file at ``.lock`` is thus the one live run;
    deleting after letting go instead would allow two (one locking the deleted file, one a new file).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / LOCK_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cannot(self.path.parent, e) from e
        while True:
            try:
                self._file = open(self.path, "a+", encoding="utf-8")
            except OSError as e:
                raise _cannot(self.path.parent, e) from e
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
            if self._holds_the_path():
                break
            self._file.close()  # the run that held it ended and deleted it meanwhile: lock the file there now
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def _holds_the_path(self) -> bool:
        """Whether ``.lock`` still names the file this object has open."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._file.fileno())
        return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        """Delete the lock file (still locked, see the class docstring), then drop the lock."""
        if self._file.closed:
            return
        if fcntl is not None and self._holds_the_path():
            self.path.unlink(missing_ok=True)
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


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def claim_out_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                  files: RunFiles = TRAIN_FILES) -> tuple[OutDirLock, list[str]]:
    """Lock ``out_dir`` for this run, remove stale temporaries and leftovers; returns the lock and notes.

    ``resume``: the run continues from a checkpoint (``--resume``); ``overwrite``: it starts again and
    will delete the folder's ``files`` (``--overwrite``, :func:`remove_run_outputs`). Raises
    :class:`OutDirError`, before anything is created, when the folder cannot be written
    (:func:`check_out_dir`), when another run holds it, when it holds a run's outputs and neither
    ``resume`` nor ``overwrite`` is set, or when ``resume`` is set, ``files.checkpoint`` is missing and
    it holds outputs other than ``files.early``. With ``resume``, no checkpoint and only early outputs,
    those leftovers of a run that saved nothing are removed once the lock is held. The notes (one line
    per removal, or per temporary left where ``fcntl`` is missing) are for the caller to print.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    existing = [name for name in run_outputs(out_dir) if files.marks_a_run(name)]
    if existing and not (resume or overwrite):
        raise OutDirError(f"--out_dir {out_dir} already holds a run ({_listing(existing)}): continue it with "
                          "--resume auto, start it again with --overwrite (deletes its checkpoints and logs), "
                          "or pick another --out_dir")
    no_checkpoint = resume and not (out_dir / files.checkpoint).is_file()
    if no_checkpoint:
        saved = [name for name in existing if files.owns(name) and name not in files.early]
        if saved:
            raise OutDirError(f"--resume: --out_dir {out_dir} holds {_listing(saved)} but no {files.checkpoint} to "
                              "continue from; start the run again with --overwrite or pick another --out_dir")
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
    if no_checkpoint:
        leftovers = [name for name in run_outputs(out_dir) if name in files.early]
        if leftovers:
            _remove(out_dir, leftovers)
            notes.append(f"--resume: no {out_dir / files.checkpoint} to continue from; removed "
                         f"{', '.join(leftovers)}, left by a run that stopped before its first checkpoint, "
                         "and starting from the beginning")
    return lock, notes


def _remove(out_dir: Path, names: list[str]) -> None:
    for name in names:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_run_outputs(out_dir: str | os.PathLike, files: RunFiles = TRAIN_FILES) -> list[str]:
    """Delete what a run writes in ``out_dir`` (``files``: for a training run ``last.pth``,
    ``epoch_NNNN.pth``, ``log.jsonl``, ``tensorboard/``); other files are left. Returns the removed names."""
    out_dir = Path(out_dir)
    removed = [name for name in run_outputs(out_dir) if files.owns(name)]
    _remove(out_dir, removed)
    return removed
