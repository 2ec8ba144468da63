"""What a user sees: arguments at start, tqdm bars, TensorBoard scalars, one JSON line per epoch.

Only the main process writes anything; on other ranks a :class:`Tracker` is silent, so callers
never branch on the rank themselves.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Mapping

import torch
from tqdm import tqdm

from engine.errors import UserError
from engine.files import atomic_write


class NonFiniteLossError(UserError, RuntimeError):
    """Raised when a training loss becomes NaN or infinite."""


def format_args(flags: Mapping, commit: str | None = None) -> str:
    """The sorted flag values (``vars(args)``), one per line, and the git commit when known."""
    lines = [f"  {k}: {flags[k]!r}" for k in sorted(flags)]
    head = f"git commit: {commit or 'unknown'}\narguments:"
    return "\n".join([head, *lines])


def check_finite(loss: float | torch.Tensor, terms: dict, step: int) -> None:
    """Stop with a message naming the step and every loss term when ``loss`` (a number or a one-element
    tensor, which this reads: a synchronisation on CUDA) is not finite."""
    loss = float(loss)
    if math.isfinite(loss):
        return
    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(terms.items()) if k != "loss")
    raise NonFiniteLossError(
        f"non-finite loss {loss} at global step {step} (terms: {detail}). "
        "The last good checkpoint is kept, but resuming it repeats the same steps: start a new run with a lower "
        "--lr, or without --amp (another --out_dir, or --overwrite).")


class Tracker:
    """TensorBoard scalars by global step plus ``log.jsonl``, written by the main process only.

    With ``tensorboard=False`` it only prints and shows progress bars (for tools that log nothing).
    """

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow, and unused on other ranks
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # purge_step drops events a crashed run logged past the step it resumes from
            self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=purge_step)

    def print(self, *args, **kwargs) -> None:
        if self.enabled:
            tqdm.write(" ".join(str(a) for a in args), file=sys.stdout, **kwargs)

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(prefix + name, float(value), step)

    def hparams(self, values: dict) -> None:
        """Record the run's settings (numbers or strings) in TensorBoard's HPARAMS tab, in this run's folder."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(values, {}):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary)

    def arguments(self, flags: Mapping, commit: str | None, line: str) -> None:
        """Write every flag and the git commit to ``args.json`` (atomically) and print ``line``, the few that
        matter; the flags are in every checkpoint too."""
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.out_dir / "args.json", "w") as f:
            json.dump({"git_commit": commit, "args": dict(flags)}, f, indent=1, sort_keys=True, default=str)
        self.print(f"{line} (every argument: {self.out_dir / 'args.json'})")

    def epoch(self, record: dict) -> None:
        """Append one JSON line to ``log.jsonl``."""
        if not self.enabled:
            return
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_log(self, field: str, below: int) -> None:
        """Keep only the ``log.jsonl`` lines whose ``field`` is below ``below`` (a resumed run drops the
        lines an interrupted run wrote past its checkpoint, so they are not repeated)."""
        path = self.out_dir / "log.jsonl"
        if not self.enabled or not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get(field, below) < below]
        if kept != lines:
            with atomic_write(path, "w") as f:
                f.writelines(kept)

    def progress(self, iterable=None, **kwargs) -> tqdm:
        """A tqdm bar on the main process, a silent one elsewhere.

        On a stream that is no terminal (a log file, a pipe) the bar is kept when it ends (``leave=False`` is
        ignored), so it ends with a newline: there a cleared bar is its text and a carriage return, which
        would glue the next line (an ``error:`` line) to the bar."""
        if not kwargs.get("file", sys.stderr).isatty():
            kwargs["leave"] = True
        return tqdm(iterable, disable=not self.enabled, dynamic_ncols=True, **kwargs)

    def flush(self) -> None:
        """Write the TensorBoard events logged so far to disk (the writer otherwise flushes every 2 minutes)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
