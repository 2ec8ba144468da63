"""Files that appear whole or not at all.

Every output of mfo (CSV, checkpoint, JSON, PNG) is written to a temporary file in its destination
folder and moved into place with ``os.replace`` once complete, so a crash or a kill mid-write leaves
the previous file (if any) intact and no half-written file under the final name. The file gets the
permissions any other new file would (``0666`` less the umask): ``mkstemp`` alone would leave it
readable by its owner only.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """Permissions of a new file (``0666``) or folder (``0777``) under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file is ``.<name>.<random>.tmp`` in the same folder (same file system, so the
    rename is atomic); it is removed on any error. Text modes default to UTF-8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, default_mode())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_temp_dir(final: str | os.PathLike, tag: str = "partial") -> Path:
    """A fresh hidden folder ``.<name>.<tag>-<random>`` beside ``final``, with the umask's permissions,
    to be filled and then renamed onto ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{tag}-"))
    tmp.chmod(default_mode(directory=True))
    return tmp


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Fill a fresh temporary folder beside ``final`` (see :func:`make_temp_dir`) and rename it onto
    ``final`` when the block succeeds; on any error the temporary folder is removed. If another process
    renamed its own folder onto ``final`` first, that one is kept and this one dropped."""
    final = Path(final)
    tmp = make_temp_dir(final)
    try:
        yield tmp
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
