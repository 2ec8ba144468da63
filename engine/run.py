"""A run's bookkeeping, shared by pretraining (``train.py``) and the evaluation tools: running means, the
interval log, the checkpointer with background writes, resume (finding the file, its checks, the
finished-run rule) and seeding."""
from __future__ import annotations

import datetime
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from engine import distributed
from engine.checkpoint import (BackgroundWriter, CheckpointError, check_resume_flags, git_commit, host_copy,
                               key_mismatch, load_checkpoint, resolve_resume, rng_state, save_checkpoint, set_rng_state,
                               unwrap)
from engine.errors import UserError
from engine.rundir import TRAIN_FILES, RunFiles, remove_run_outputs
from engine.tracking import Tracker, check_finite


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch in this process (a worker seeds itself with base seed + rank)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunningMeans:
    """Weighted running sums of named values and the weight each got: per-step values add with weight 1
    (a value logged at some steps only counts those), per-batch means with the batch size."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, values: Mapping[str, float], weight: float = 1) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * weight
            self.counts[name] = self.counts.get(name, 0) + weight

    def means(self) -> dict[str, float]:
        return {name: total / self.counts[name] for name, total in self.sums.items()}


@dataclass
class RunState(RunningMeans):
    """Where a run stands: the counters that ``last.pth`` saves and a resume restores.

    The running sums are those of every logged value over the steps of the current epoch (the batch-health
    values are logged every ``--log_every`` steps only), so an epoch's averages include the steps before a
    resume."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # its steps done
    global_step: int = 0
    replaced: int = 0  # videos replaced by another in this epoch, over all processes
    seconds: float = 0.0  # wall time of this epoch's steps (the logged step times summed)
    reference: dict[str, float] = field(default_factory=dict)  # the monitor's values at step 0

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch, self.sums, self.counts, self.replaced, self.seconds = \
            self.epoch + 1, 0, {}, {}, 0, 0.0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "epoch_sums": dict(self.sums), "epoch_counts": dict(self.counts), "epoch_replaced": self.replaced,
                "epoch_seconds": self.seconds, "monitor_reference": dict(self.reference)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.sums = dict(state.get("epoch_sums", {}))
        # checkpoints from before per-value counts logged every value at every step
        self.counts = dict(state.get("epoch_counts", {name: self.step_in_epoch for name in self.sums}))
        self.replaced = state.get("epoch_replaced", 0)
        self.seconds = state.get("epoch_seconds", 0.0)
        self.reference = dict(state.get("monitor_reference", {}))


def reads_at(global_step: int, step_in_epoch: int, steps: int, log_every: int) -> bool:
    """Whether the step just done ends a logging interval (every ``log_every`` global steps, and the epoch's
    last step). A function of counters that every rank shares, so every rank reaches the interval's
    collectives at the same step: a rank-dependent term here is a deadlock (a rank that skips the read
    leaves the others waiting in it)."""
    return global_step % log_every == 0 or step_in_epoch == steps


class StepLog:
    """The steps of the current logging interval, kept on the device until one read at its end.

    Reading a CUDA tensor's value waits for every kernel queued before it. The trainer therefore
    queues the steps of an interval back to back and reads them all at once (:meth:`read`): one
    synchronisation per interval. Since the read waits for the work to finish, the wall time since
    the previous read is the time of finished work, and the speed logged from it is true.
    ``health`` turns a step's kept outputs (on the CPU) into more values to log.
    """

    def __init__(self, health: Callable[[dict[str, torch.Tensor]], dict[str, float]] | None = None):
        self.health = health
        self.steps: list[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]] = []
        self.replaced = 0  # videos this process replaced in the interval
        self.waited = 0.0  # seconds the loop waited for the loader in the interval
        self.start = time.perf_counter()

    def add(self, step: int, values: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor] | None,
            replaced: int) -> None:
        self.steps.append((step, values, outputs))
        self.replaced += replaced

    def read(self) -> tuple[list[dict[str, float]], float]:
        """Every step's values as floats (one device-to-host copy; the health of the steps that kept their
        outputs), and the wall seconds since the interval began. A non-finite ``loss`` raises."""
        names = list(self.steps[0][1])
        table = torch.stack([torch.stack([values[name].float() for name in names])
                             for _, values, _ in self.steps]).cpu().tolist()  # [steps, values], waits for the device
        seconds = time.perf_counter() - self.start
        records = []
        for (step, values, outputs), row in zip(self.steps, table):
            record = dict(zip(names, row))
            check_finite(record["loss"], record, step)
            if outputs is not None and self.health is not None:
                record.update(self.health({k: v.cpu() for k, v in outputs.items()}))
            records.append(record)
        return records, seconds

    def scalars(self, records: list[dict[str, float]], seconds: float, clips_per_step: int) -> dict[str, float]:
        """TensorBoard's values of the interval that :meth:`read` gave: the means of its steps' values
        (``train/``; a value some steps lack is the mean of those that have it) and its speed."""
        means = RunningMeans()
        for record in records:
            means.add(record)
        return {**{f"train/{k}": v for k, v in means.means().items()}, "speed/step_seconds": seconds / len(records),
                "speed/clips_per_s": clips_per_step * len(records) / seconds,
                "speed/data_wait_fraction": self.waited / seconds}


@dataclass
class Training:
    """What a run trains and what its steps change, saved and restored together."""

    model: nn.Module  # as train_step calls it: DistributedDataParallel under torch.distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    bank: nn.Module  # any module whose state a resume restores (pretraining's prototype queue)
    run: RunState

    @classmethod
    def adam(cls, model: nn.Module, bank: nn.Module, *, lr: float, wd: float, decay_at: int) -> "Training":
        """A fresh run of ``model``: Adam (fused: one kernel for all parameters, 25x faster than the per-tensor
        loop on a CPU) with the lr multiplied by 0.1 after epoch ``decay_at``."""
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=wd, fused=True)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[decay_at], gamma=0.1)
        return cls(model, optimizer, scheduler, bank, RunState())

    @property
    def core(self) -> nn.Module:
        return unwrap(self.model)

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint loaded on the CPU (every tensor is copied onto its device here)."""
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # Adam's moments in their parameter's memory layout: a checkpoint written on the CPU, or before the
        # model went channels-last on CUDA, holds them contiguous, and the fused step reads them elementwise
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                for name, value in self.optimizer.state.get(param, {}).items():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        self.optimizer.state[param][name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
        self.scheduler.load_state_dict(state["scheduler"])
        self.bank.load_state_dict(state["bank"])
        self.run.load_state_dict(state)

    def restore(self, state: dict, rank: int, world_size: int) -> list[str]:
        """:meth:`load_state_dict`, and this rank's random generators when as many processes wrote ``state``
        (the exact continuation); else the note that they restart from the seed."""
        self.load_state_dict(state)
        if saved_world_size(state) == world_size:
            set_rng_state(state["rng"][rank])
            return []
        return [f"note: the checkpoint was written by {saved_world_size(state)} process(es), this run has "
                f"{world_size}: it continues at the same sample of the epoch (same global batch), but the "
                "processes' random generators restart from --seed"]

    def end_epoch(self, steps: int) -> dict:
        """Step the lr schedule at the end of the epoch in progress; its summary: the averages over every step
        (also those before a resume, whose sums come from the checkpoint) and the lr after it."""
        self.scheduler.step()
        run = self.run
        return {"epoch": run.epoch, "global_step": run.global_step, "lr": self.optimizer.param_groups[0]["lr"],
                "steps": steps, "train_seconds": run.seconds, "replaced_videos": run.replaced, **run.means()}

    def files(self, rngs: list[dict], flags: Mapping, videos: int, epoch_file: str | None) -> dict:
        """``last.pth`` (everything an exact resume needs: ``rngs``, every rank's random generators, and
        their number) and ``epoch_file`` when given (what an evaluation needs), for :meth:`Checkpointer.save`."""
        weights = {"model": self.core.state_dict(), "bank": self.bank.state_dict(), "epoch": self.run.epoch,
                   "global_step": self.run.global_step, "args": dict(flags), "commit": git_commit()}
        last = {**weights, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rngs, "world_size": len(rngs), "videos": videos, **self.run.state_dict()}
        return {**({epoch_file: weights} if epoch_file else {}), "last.pth": last}


def open_outputs(out_dir: str | Path, *, flags: Mapping, headline: str, overwrite: bool = False,
                 files: RunFiles = TRAIN_FILES, notes: Iterable[str | None] = (), purge_step: int | None = None,
                 enabled: bool = True) -> Tracker:
    """A run's outputs, opened once every input is checked: with ``overwrite`` what an earlier run wrote
    (``files``) deleted first; the tracker (``purge_step``: see ``engine.tracking.Tracker``); every flag and
    the git commit in ``args.json``; then ``headline`` (what the run does and where), what was removed and the
    ``notes`` that are not None, printed. Writes and prints nothing where not ``enabled`` (ranks but 0)."""
    removed = remove_run_outputs(out_dir, files) if overwrite and enabled else []
    tracker = Tracker(out_dir, enabled=enabled, purge_step=purge_step)
    tracker.arguments(flags, git_commit(), headline)
    for line in [f"--overwrite: removed {', '.join(removed)} from {out_dir}"] * bool(removed) + list(notes):
        if line:
            tracker.print(line)
    return tracker


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``model.train()``; with ``freeze_bn`` its BatchNorm layers stay in eval mode (running statistics)."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def distribute(training: Training, ctx: distributed.Context, compile: bool, dist_timeout: float) -> None:
    """Wrap the model for several processes (SyncBatchNorm on CUDA, DDP); compile its backbone in place."""
    if ctx.world_size > 1:
        model = training.model
        if ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # graph heads are unused before --split
        training.model = distributed.data_parallel(model, ctx.device, datetime.timedelta(minutes=dist_timeout),
                                                   find_unused_parameters=True)
    if compile:
        training.core.backbone.compile()  # in place: the state dict's keys stay those of the plain backbone


class Checkpointer:
    """A run's checkpoint files in ``out_dir``, written by the main process in the background (one file
    after the other, atomically) from a snapshot taken at :meth:`save`."""

    def __init__(self, out_dir: str | Path, *, is_main: bool = True, flush: Callable[[], None] | None = None):
        self.out_dir, self.is_main, self.flush = Path(out_dir), is_main, flush
        self.writer = BackgroundWriter()

    def save(self, files: Callable[[list[dict]], Mapping[str, dict]]) -> None:
        """A collective: every rank calls it at the same step. ``files(rngs)``, called on the main process with
        every rank's random generators in rank order, names each file and its state (copied to the host here);
        ``flush`` runs first, so the logs up to this step are on disk before the checkpoint that has them."""
        rngs = distributed.all_gather_object(rng_state())  # the caller's step is the same on every rank
        if not self.is_main:
            return
        if self.flush is not None:
            self.flush()
        snapshot = {name: host_copy(state) for name, state in files(rngs).items()}

        def write() -> None:
            for name, state in snapshot.items():
                save_checkpoint(state, self.out_dir / name)

        self.writer.submit(write)

    def wait(self) -> None:
        self.writer.wait()

    def close(self) -> None:
        self.writer.close()


class Finished(Exception):
    """A resume of a run that has done all its epochs: nothing to train (not an error)."""


def check_epochs(done: int, step_in_epoch: int, epochs: int, *, too_many: str, finished: str | None = None) -> None:
    """The epoch check of a resume from a checkpoint of ``done`` epochs and ``step_in_epoch`` steps into the
    next: past ``epochs`` raises :class:`CheckpointError` (``too_many``, a run cannot be shortened); exactly at
    their end is the finished-run rule, :class:`Finished` (``finished``; None: the caller decides)."""
    if done > epochs or (done == epochs and step_in_epoch):
        raise CheckpointError(too_many)
    if finished is not None and done == epochs:
        raise Finished(finished)


def resume_checkpoint(resume: str | None, out_dir: str | Path, *, flags: Mapping, may_change: Iterable[str],
                      epochs_key: str, finished: str | None = "", first_epoch: int = 0, defaults: Mapping | None = None,
                      spelling: Mapping[str, str] | None = None, check: Callable[[Path, dict], None] | None = None
                      ) -> tuple[Path | None, dict | None, list[str]]:
    """The checkpoint that ``--resume`` names, its state (None, None without one), checked to continue the run
    of ``flags`` (``vars(args)``), and the lines to print. Reads only.

    Refuses in one line (:class:`CheckpointError`): a file without optimizer state (weights only, as an
    epoch or best file); what ``check(path, state)`` refuses (the caller's checks of the file's contents, e.g.
    :func:`check_fits`, run before the flags are compared: they say more); flags other than the checkpoint's
    beyond ``may_change`` (``defaults`` and ``spelling``: see ``engine.checkpoint.check_resume_flags``); more
    epochs trained than ``flags[epochs_key]`` (a run cannot be shortened). A checkpoint at the end of its
    epochs is a finished run: :class:`Finished`, whose line ends with ``finished`` (None: not finished, e.g.
    still to be tested).
    ``first_epoch``: the number of the first epoch in the tool's lines (0 or 1)."""
    path = resolve_resume(resume, out_dir)
    if path is None:
        return None, None, [f"--resume auto: no {Path(out_dir) / 'last.pth'} yet, starting from the beginning"] \
            if resume else []
    state = load_checkpoint(path)  # on the CPU: the random generators' states must stay there
    if "optimizer" not in state or "args" not in state:
        raise CheckpointError(f"--resume {path} holds model weights only (no optimizer state: an epoch or best file, "
                              "what --pretrained reads); resume from the run's last.pth")
    if check is not None:
        check(path, state)
    check_resume_flags(state["args"], flags, may_change=may_change, path=path, defaults=defaults, spelling=spelling)
    epochs_flag = (spelling or {}).get(epochs_key, f"--{epochs_key}")
    done, step = state["epoch"], state.get("step_in_epoch", 0)
    epochs, trained = flags[epochs_key], state["args"].get(epochs_key)
    check_epochs(done, step, epochs,
                 too_many=f"--resume {path} has trained {done} epochs and {step} steps, more than {epochs_flag} "
                          f"{epochs}: a run cannot be shortened; give {epochs_flag} {done + bool(step)} or more, or start a "
                          "new run in another --out_dir",
                 finished=None if finished is None else
                 f"nothing left to do: {path} is the end of a finished run of {done} epochs{finished}; to train "
                 f"longer, give a larger {epochs_flag} with --resume auto")
    at = f"all {done} epochs trained" if done == epochs else f"epoch {done + first_epoch}, step {step} of the epoch"
    lines = [f"resumed from {path}: {at}, global step {state.get('global_step', state.get('step'))}"]
    if trained is not None and trained != epochs:
        lines.append(f"{'extending' if epochs > trained else 'shortening'} the run of {epochs_flag} {trained} to "
                     f"{epochs_flag} {epochs}")
    return path, state, lines


def saved_world_size(state: dict) -> int:
    """The number of processes that wrote ``state``; checkpoints from before it was recorded hold one
    random state per process."""
    return state.get("world_size", len(state["rng"]))


def check_global_batch(path: Path, state: dict, batch: int, world_size: int, *, flag: str = "--train_batch") -> None:
    """Refuse a checkpoint of another global batch (``flag`` x processes): its steps would cover other samples."""
    old_world, old_batch = saved_world_size(state), state["args"][flag.lstrip("-")]
    old_global, new_global = old_world * old_batch, world_size * batch
    if old_global != new_global:
        fits = f"{flag} {old_global // world_size}" if old_global % world_size == 0 else f"{old_world} process(es)"
        raise CheckpointError(f"--resume {path} was written with {flag} {old_batch} on {old_world} "
                              f"process(es), a global batch of {old_global}; this run has {flag} "
                              f"{batch} on {world_size} ({new_global}), so its steps would cover other "
                              f"samples. Resume with {fits}, or start a new run in another --out_dir")


def check_fits(path: Path, module: nn.Module, state: dict, flags: Mapping, *, names: tuple[str, ...], verbose: bool,
               show: bool = True) -> None:
    """Refuse a checkpoint whose ``model`` does not fit ``module`` in one line naming the flags ``names`` that
    shape it (the checkpoint's and these ``flags``); ``verbose`` (printed where ``show``) lists the keys."""
    missing, unexpected, resized = key_mismatch(module, state["model"])
    if missing or unexpected or resized:
        theirs, ours = (", ".join(f"--{k} {values.get(k)}" for k in names) for values in (state["args"], flags))
        if verbose and show:
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("resized", resized)):
                print(f"{what} keys ({len(keys)}): {' '.join(keys) or '-'}", file=sys.stderr)
        raise CheckpointError(f"--resume {path} does not fit this model: it was written with {theirs}, this run has "
                              f"{ours} ({len(missing)} missing, {len(unexpected)} unexpected, {len(resized)} resized "
                              f"keys{'' if verbose else '; --verbose lists them'}); give the checkpoint's flags")


class CompileError(UserError):
    """``--compile`` cannot run here (torch.compile failed to trace or to build the backbone)."""


def compile_failure(error: Exception) -> bool:
    """Whether ``error`` is torch.compile's (tracing or building, e.g. no C++ compiler or no Triton)."""
    import torch._dynamo  # only imported with --compile: slow to import

    return isinstance(error, torch._dynamo.exc.TorchDynamoException)


def explained(error: Exception, where: str, *, dist_timeout: float, out_dir: str, compiled: bool) -> Exception:
    """``error`` as one line (caused by it) when a collective failed at ``where`` (a peer hung or died) or, with
    ``compiled``, torch.compile failed; else ``error`` itself, to raise again."""
    failure = distributed.collective_failure(error)
    if failure is not None:
        kind = distributed.PeerLost if failure == distributed.PEER_LOST else distributed.CollectiveError
        line = kind(f"{where}: {failure}; --dist-timeout is {dist_timeout:g} min. The last "
                    f"checkpoint in {out_dir} is intact: continue with --resume auto")
    elif compiled and compile_failure(error):
        cause = getattr(error, "inner_exception", None) or error  # a backend's failure, wrapped by dynamo
        reason = (str(cause).strip().splitlines() or [""])[0]
        line = CompileError(f"--compile: torch.compile could not build the backbone here "
                            f"({type(cause).__name__}: {reason}); run without --compile")
    else:
        return error
    line.__cause__ = error
    return line
