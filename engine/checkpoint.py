"""Checkpoints: atomic saves, safe loads, exact-resume state.

Every file is written by one process (rank 0 by convention, callers decide) to a temporary file in
the destination folder and moved into place with ``os.replace``, so a crash or a kill during a save
leaves the previous file intact. Files are loaded with ``weights_only=True``: a checkpoint holds only
tensors and plain Python values (dicts, lists, numbers, strings), never pickled objects.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from engine.errors import UserError
from engine.files import atomic_write


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or of the wrong kind."""


def save_checkpoint(state: dict, path: str | os.PathLike, *, what: str = "checkpoint",
                    flag: str = "--out_dir") -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename).

    A failed write (a full disk) raises :class:`CheckpointError` naming the file as ``what``, the space it
    needs and the space left, and ``flag``, the command-line flag that chose where it goes."""
    path = Path(path)
    try:
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        # a full disk reaches us as ENOSPC or as torch's "unexpected pos" from its zip writer
        raise CheckpointError(f"could not write {what} {path}: {e}. {_space_report(state, path.parent, flag)}") from e
    return path


def host_copy(state):
    """``state`` (nested dicts, lists and tuples) with every tensor copied to the CPU: a snapshot that
    training can no longer change, for :class:`BackgroundWriter`."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: host_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(host_copy(v) for v in state)
    return state


class BackgroundWriter:
    """Checkpoint writes on a background thread, one at a time, so that training goes on meanwhile.

    A 400 MB ``last.pth`` takes about a second to serialise and ``fsync``; at the end of a short
    epoch that is a visible pause of the GPU. :meth:`submit` first waits for the previous write, so
    writes happen in order and at most one is in flight; an error of a write is raised by the next
    :meth:`submit` or :meth:`wait`. What a write saves must be a snapshot (:func:`host_copy`), since
    training changes the live tensors meanwhile. Call :meth:`wait` before anything that must come
    after the file is on disk (the next epoch's log line, the end of the run).
    """

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def submit(self, write: Callable[[], object]) -> None:
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the write in flight, then stop the thread (also when that write failed)."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _size(nbytes: float) -> str:
    """A byte count for messages: whole MiB from 1 MiB on, else KiB or bytes (a small file is not "0 MiB")."""
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.0f} MiB"
    return f"{nbytes / 2**10:.0f} KiB" if nbytes >= 2**10 else f"{nbytes:.0f} bytes"


def _space_report(state: dict, folder: Path, flag: str = "--out_dir") -> str:
    """How much the state needs (its tensors' bytes) against what the folder's disk has left, for write
    errors; ``flag`` chose the folder."""
    need = 0

    def walk(x) -> None:
        nonlocal need
        if isinstance(x, torch.Tensor):
            need += x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(state)
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} are free in {folder}"
    except OSError:  # the folder could not be made
        free = f"{folder} is not writable"
    return (f"It needs about {_size(need)} and {free}; "
            f"free some space or write to another folder ({flag}). The previous file, if any, is intact.")


def link_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` hold the same bytes as ``src`` without serialising twice, atomically.

    A hard link (a copy where links are not supported) under a temporary name, then ``os.replace``;
    replacing ``dst`` later leaves ``src`` untouched.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a readable error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path given to --resume/--pretrained)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        # torch's own text would advise weights_only=False: unsafe, and no mfo file needs it
        what = ("it holds pickled Python objects, which no mfo checkpoint does" if "Unsupported global" in str(e)
                else "it is not an mfo checkpoint, or it is truncated (an interrupted copy or download)")
        raise CheckpointError(f"cannot read checkpoint {path}: {what}; "
                              "pass a complete file written by train.py, eval_linear.py or finetune.py") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """``--resume``: '' or None -> no resume; 'auto' -> ``out_dir/last.pth`` if present; else a path that must exist."""
    if not resume:
        return None
    if resume == "auto":
        last = Path(out_dir) / "last.pth"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no such file (use --resume auto to continue from --out_dir)")
    return path


def resume_hint(out_dir: str | os.PathLike) -> str:
    """Where a run that died can continue from, in a sentence (its ``out_dir/last.pth``, if any)."""
    path = Path(out_dir) / "last.pth"
    if not path.is_file():
        return f"No checkpoint was written yet ({path}): start again (--resume auto starts from the beginning)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        at = f" (global step {state['global_step']})"
    except Exception:  # unreadable or foreign: say where it is all the same
        at = ""
    return f"The last checkpoint is {path}{at}: continue with --resume auto"


def _flag_value(value) -> str:
    """A flag value as a command line would show it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "" or value == [] or value == ():
        return "(none)"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def changed_flags(saved: Mapping, current: Mapping, *, may_change: Iterable[str],
                  defaults: Mapping | None = None, spelling: Mapping[str, str] | None = None) -> list[str]:
    """The flags of ``current`` whose value differs from ``saved``, as ``--name old -> new``, sorted.

    ``saved``: the flags a checkpoint recorded (``vars(args)`` of the run that wrote it); ``current``:
    this run's. Flags in ``may_change`` are not compared. A flag the checkpoint lacks (it predates
    the flag) is compared with ``defaults[name]``, the value that reproduces the older code's behaviour,
    and not compared when ``defaults`` has none; a flag only the checkpoint has (since removed) is
    ignored. Lists and tuples compare equal when their items do (JSON-like round trips). ``spelling``
    maps a name to the flag as the command line writes it (default ``--name``)."""
    keep = set(may_change)
    defaults = defaults or {}
    spelling = spelling or {}
    changed = []
    for name in sorted(set(current) - keep):
        if name in saved:
            old = saved[name]
        elif name in defaults:
            old = defaults[name]
        else:
            continue
        new = current[name]
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            differs = list(old) != list(new)
        else:
            differs = old != new or isinstance(old, bool) != isinstance(new, bool)
        if differs:
            changed.append(f"{spelling.get(name, '--' + name)} {_flag_value(old)} -> {_flag_value(new)}")
    return changed


def flag_spelling(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each flag's name as the command line writes it (``dist_url`` -> ``--dist-url``), by attribute name."""
    return {action.dest: max(action.option_strings, key=len) for action in parser._actions if action.option_strings}


def check_resume_flags(saved: Mapping, current: Mapping, *, may_change: Iterable[str], path: str | os.PathLike,
                       defaults: Mapping | None = None, spelling: Mapping[str, str] | None = None) -> None:
    """Refuse to resume the checkpoint at ``path`` with flags that change the computation.

    Raises :class:`CheckpointError` in one line naming every changed flag with its old and new value
    (see :func:`changed_flags` for ``saved``, ``current``, ``may_change`` and ``defaults``), and the
    flags that may change."""
    spelling = spelling or {}
    changed = changed_flags(saved, current, may_change=may_change, defaults=defaults, spelling=spelling)
    if changed:
        allowed = " ".join(sorted(spelling.get(name, f"--{name}") for name in may_change))
        raise CheckpointError(f"--resume {path} was written with other flags: {', '.join(changed)}. A resume "
                              f"keeps the flags of the run (only {allowed} may change); give the checkpoint's "
                              "values, or start a new run in another --out_dir")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel (so saved keys carry no ``module.`` prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def git_commit() -> str | None:
    """The git commit of the code being run, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as weights_only-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (from a checkpoint loaded onto any device)."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.cpu().numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"].cpu())  # generator states are CPU byte tensors, also CUDA's
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def load_backbone(backbone: nn.Module, checkpoint_path: str | os.PathLike, prefix: str = "backbone.") -> dict:
    """Load the ``prefix``-ed weights of a checkpoint into ``backbone`` strictly; report what was used.

    Accepts a ``train.py`` checkpoint (the model under ``'model'``, backbone keys ``backbone.*``),
    any bare state dict with ``backbone.*`` keys (e.g. a saved ``VideoClassifier``), or the state
    dict of a bare backbone; a leading DDP ``module.`` is stripped. Every other key (the MFO heads,
    a classifier head) is ignored and reported. Raises ``CheckpointError`` naming the missing and
    unexpected keys if the backbone does not load completely.

    Returns ``{'path', 'loaded': [keys], 'ignored': [keys], 'summary': str}``.
    """
    ckpt = load_checkpoint(checkpoint_path)
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(prefix) for k in state):
        loaded = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        ignored = sorted(k for k in state if not k.startswith(prefix))
    else:
        loaded, ignored = state, []

    missing, unexpected, resized = key_mismatch(backbone, loaded)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint_path}: the backbone does not load fully: {len(missing)} missing key(s) "
            f"{_preview(missing)}, {len(unexpected)} unexpected key(s) {_preview(unexpected)}. "
            "Is --arch the backbone the checkpoint was trained with?"
        )
    if resized:
        raise CheckpointError(f"{checkpoint_path}: cannot load the backbone: size mismatch in {len(resized)} "
                              f"tensor(s) {_preview(resized)}. Is --arch the backbone the checkpoint was trained with?")
    backbone.load_state_dict(loaded, strict=True)

    groups = Counter(k.split(".")[0] for k in ignored)
    summary = f"loaded {len(loaded)} backbone tensors from {checkpoint_path}"
    if ignored:
        summary += "; ignored " + ", ".join(f"{name} ({n})" for name, n in sorted(groups.items()))
    return {"path": str(checkpoint_path), "loaded": sorted(loaded), "ignored": ignored, "summary": summary}


def key_mismatch(module: nn.Module, state: dict) -> tuple[list[str], list[str], list[str]]:
    """How ``state`` differs from ``module.state_dict()``: sorted (missing, unexpected, resized) keys,
    resized being the common keys whose tensor shapes differ. All empty: a strict load will succeed."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    resized = sorted(k for k in set(own) & set(state)
                     if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape)
    return missing, unexpected, resized


def _preview(keys: list[str], n: int = 8) -> str:
    """The first ``n`` keys, then how many more."""
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + more + "]"
