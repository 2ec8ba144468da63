#!/usr/bin/env python
"""Submit train.py, eval_linear.py or finetune.py to SLURM (through submitit); the job requeues until the run is done.

    python scripts/submit.py --nodes 2 --gpus_per_node 8 --partition P --time 4320 [--account A] [--job_dir DIR] \\
        -- --csv_file k400.csv --out_dir runs/k400 [more train.py flags]
    python scripts/submit.py --script eval_linear.py --partition P --time 600 \\
        -- --pretrained runs/k400/last.pth --train_csv ucf_train.csv --test_csv ucf_test.csv --out_dir runs/probe

Everything after ``--`` is the script's own flags. ``--resume auto`` is added, and ``--out_dir`` when not given (the
script's default), so that every start of the job continues the same run; ``--resume PATH`` and ``--overwrite``
are refused (a requeued job would repeat them). The flags are checked here, before anything is submitted.

In the job, one task per GPU (``--tasks_per_node`` without GPUs):

* every task exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from SLURM's variables (submitit's
  job environment; the port is drawn from the job id, or MASTER_PORT when set), and train.py starts its
  process group with env://, as under torchrun;
* SIGTERM (a preemption, ``scontrol requeue``, ``scancel``, the time limit itself) is the script's graceful stop:
  every rank stops at the same step, rank 0 writes last.pth, status 143; SLURM requeues a preempted or requeued
  job itself and ends a cancelled one;
* SIGUSR2, which SLURM sends ``--signal_delay`` seconds before the time limit (sbatch's ``--signal``), becomes the
  same stop; once it has saved, the job requeues itself (submitit's checkpoint and requeue, at most
  ``--max_timeouts`` times);
* a finished run ("nothing left to do"), a user error (its ``error:`` line ends the task's log) or a crash is not
  requeued.

The job folder (``--job_dir``) holds submitit's files: the sbatch script (JOBID_submission.sh), each task's log
(JOBID_TASK_log.out and .err, appended to at every start), the pickled task; and job.json, the submitted command.
See docs/clusters.md.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import submitit

from engine.errors import UserError, exit_on_error
from engine.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train.py": "train", "eval_linear.py": "eval_linear", "finetune.py": "finetune"}  # file -> module
STOPPED = 128 + signal.SIGTERM  # the status of a run that stopped on the graceful stop and saved its step
WARNING = signal.SIGUSR2  # submitit's signal: what SLURM sends before the time limit (sbatch --signal)
EARLIEST = 40  # seconds into a start before which SIGUSR2 must not be asked for (see parse_args)
ANNOUNCE = (f"{WARNING.name} received (the job's time limit is near, or it is preempted): stopping at the next "
            "step as on SIGTERM; the job requeues itself once last.pth is written\n")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as it is written, and each flag's default after its help (the flags without a value
    of their own say in their help what they default to)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default in (None, []) else super()._get_help_string(action)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/submit.py", description=__doc__, formatter_class=Formatter,
                                usage="%(prog)s [options] -- <flags of the script>")
    g = p.add_argument_group("what runs")
    g.add_argument("--script", choices=sorted(SCRIPTS), default="train.py",
                   help="the entry point the job runs; eval_linear.py and finetune.py run in one process "
                        "(one node, one task)")
    g.add_argument("--job_dir", default=None, metavar="DIR",
                   help="folder for submitit's files and job.json, on a disk every node sees (default: "
                        "OUT_DIR/slurm; with eval_linear.py --retrieval, which wants an empty --out_dir, "
                        "OUT_DIR_slurm)")
    g.add_argument("--job_name", default=None, metavar="NAME", help="SLURM job name (default: mfo-<script>, e.g. mfo-train)")
    g = p.add_argument_group("resources")
    g.add_argument("--nodes", type=int, default=1, metavar="N", help="number of machines")
    g.add_argument("--gpus_per_node", type=int, default=None, metavar="G",
                   help="GPUs per machine, one task each (default: 8 for train.py, 1 for the evaluation tools; "
                        "0 on machines without GPU, with --tasks_per_node)")
    g.add_argument("--tasks_per_node", type=int, default=None, metavar="T",
                   help="processes per machine (default: one per GPU, or 1 without GPU); on CPU they train with "
                        "gloo")
    g.add_argument("--cpus_per_task", type=int, default=10, metavar="C",
                   help="CPU cores per process: the data loader's --workers and one for the process itself")
    g.add_argument("--mem_gb", type=int, default=0, metavar="GB", help="memory per machine in GB (0: the partition's default)")
    g.add_argument("--time", type=int, default=4320, metavar="MINUTES",
                   help="time limit of each start of the job, in minutes; a longer run is requeued as often as "
                        "it needs (--max_timeouts)")
    g = p.add_argument_group("cluster settings (passed to sbatch as they are)")
    g.add_argument("--partition", default=None, metavar="P", help="partition (default: the cluster's default partition)")
    g.add_argument("--account", default=None, metavar="A", help="account charged for the job (default: the user's default account)")
    g.add_argument("--qos", default=None, metavar="Q", help="quality of service (default: the partition's)")
    g.add_argument("--constraint", default=None, metavar="FEATURES", help="node features required, e.g. volta32gb (default: none)")
    g.add_argument("--exclude", default=None, metavar="NODES", help="nodes not to use, e.g. node[01-03] (default: none)")
    g.add_argument("--mail_type", default=None, metavar="EVENTS", help="mail events, e.g. END,FAIL (default: no mail)")
    g.add_argument("--mail_user", default=None, metavar="ADDRESS", help="mail address for --mail_type (default: the submitting user)")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY[=VALUE]",
                   help="one more #SBATCH line, e.g. --sbatch reservation=R --sbatch exclusive (repeat it); "
                        "written as #SBATCH --KEY=VALUE, or #SBATCH --KEY without a value (default: none)")
    g = p.add_argument_group("stopping and requeueing")
    g.add_argument("--signal_delay", type=int, default=120, metavar="SECONDS",
                   help="seconds before the time limit at which SLURM sends SIGUSR2: time to finish a step and "
                        "write last.pth (SLURM may send it up to 30 s earlier); at most 60 x --time - 40")
    g.add_argument("--max_timeouts", type=int, default=20, metavar="N",
                   help="how many times the job may requeue itself after reaching its time limit (preemptions "
                        "and scontrol requeue do not count)")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """This script's flags and the script's flags: the arguments before and after the first ``--``."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for name in ("nodes", "cpus_per_task", "time", "max_timeouts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("gpus_per_node", "tasks_per_node"):
        least = 0 if name == "gpus_per_node" else 1
        if getattr(args, name) is not None and getattr(args, name) < least:
            parser.error(f"--{name} must be at least {least}, got {getattr(args, name)}")
    if args.mem_gb < 0 or args.signal_delay < 0:
        parser.error("--mem_gb and --signal_delay must be at least 0")
    if 60 * args.time - args.signal_delay < EARLIEST:
        parser.error(f"--signal_delay {args.signal_delay} s leaves less than {EARLIEST} s of --time {args.time} min: "
                     "SLURM may send SIGUSR2 up to 30 s earlier than asked, and one in the first seconds of a start, "
                     "before the task can catch it, ends the task; give a longer --time or a shorter --signal_delay")
    for item in args.sbatch:
        if not item.split("=", 1)[0].strip() or item.startswith("-"):
            parser.error(f"--sbatch {item!r}: give KEY or KEY=VALUE, without the leading dashes")
    return args


@dataclass(frozen=True)
class Plan:
    """A checked job: what each task runs and what sbatch gets."""

    script: str
    argv: tuple[str, ...]  # the script's flags, --resume auto and --out_dir included
    out_dir: str
    job_dir: Path
    nodes: int
    tasks_per_node: int
    gpus_per_node: int

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node


# torch.distributed's variables, which a task sets from SLURM's: none may leak from the submitting shell
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
              "ROLE_RANK", "ROLE_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


@contextlib.contextmanager
def submission_environment():
    """``os.environ`` without the variables of a job or of torchrun that sbatch would pass on to the job (it
    exports the submitting environment): a submission from inside a job or a torchrun worker would otherwise
    give the new job the old one's SLURM_JOB_ID, RANK... SLURM_CONF (where the cluster's configuration is),
    SBATCH_* (the user's sbatch defaults) and everything else stay."""
    dropped = {name: os.environ.pop(name) for name in list(os.environ)
               if name in RENDEZVOUS or name.startswith(("SUBMITIT_", "SRUN_", "SLURMD_"))
               or (name.startswith("SLURM_") and name != "SLURM_CONF")}
    try:
        yield
    finally:
        os.environ.update(dropped)


@contextlib.contextmanager
def environment(**values: str):
    """``os.environ`` with ``values`` set inside the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def plan(args: argparse.Namespace, flags: list[str]) -> Plan:
    """Check the job that ``args`` and the script's ``flags`` describe; a mistake is a :class:`UserError` (or the
    script's own parser error, status 2)."""
    gpus = args.gpus_per_node if args.gpus_per_node is not None else (8 if args.script == "train.py" else 1)
    tasks = args.tasks_per_node or max(gpus, 1)
    if args.script != "train.py" and args.nodes * tasks != 1:
        raise UserError(f"{args.script} runs in one process: give --nodes 1 and one task (--gpus_per_node 1, or "
                        "--tasks_per_node 1 without GPU)")
    module = importlib.import_module(SCRIPTS[args.script])
    with environment(WORLD_SIZE=str(args.nodes * tasks)):  # how train.py tells that it runs with other processes
        given = module.parse_args(flags)  # the script's parser reports its own mistakes (usage, status 2)
    if getattr(given, "multiprocessing_distributed", False):
        raise UserError("--multiprocessing-distributed: the job starts one process per GPU itself (env://, as "
                        "torchrun); drop it")
    if given.overwrite and any(f == "--overwrite" for f in flags):  # a --demo's own is dropped by --resume auto
        raise UserError("--overwrite: every start of the job would delete the run again; remove the old run's "
                        "files yourself, or pick another --out_dir")
    retrieval = getattr(given, "retrieval", False)
    if given.resume not in ("", "auto"):
        raise UserError(f"--resume {given.resume}: every start of the job would go back to that checkpoint; copy it "
                        "to OUT_DIR/last.pth and let the job resume (--resume auto is added)")
    argv = list(flags)
    if not any(f == "--out_dir" or f.startswith("--out_dir=") for f in flags):
        argv += ["--out_dir", given.out_dir]
    if not given.resume and not retrieval:  # retrieval trains nothing: nothing to resume
        argv += ["--resume", "auto"]
    if args.job_dir is not None:
        job_dir = Path(args.job_dir)
    elif retrieval:
        job_dir = Path(given.out_dir).with_name(Path(given.out_dir).name + "_slurm")
    else:
        job_dir = Path(given.out_dir) / "slurm"
    return Plan(args.script, tuple(argv), given.out_dir, job_dir, args.nodes, tasks, gpus)


def setup_lines() -> list[str]:
    """The shell lines the job runs before its tasks: the tasks import this repository's code (``Task`` is
    stored by reference), and each process uses one thread unless OMP_NUM_THREADS is set (as under torchrun)."""
    return [f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
            "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"]


def parameters(args: argparse.Namespace, job: Plan) -> dict:
    """The keyword arguments of ``submitit.SlurmExecutor.update_parameters`` for ``job``."""
    extra = {}
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        extra[key.strip()] = value if sep else True
    params = dict(job_name=args.job_name or f"mfo-{Path(job.script).stem}", time=args.time, nodes=job.nodes,
                  ntasks_per_node=job.tasks_per_node, cpus_per_task=args.cpus_per_task,
                  signal_delay_s=args.signal_delay, setup=setup_lines(),
                  additional_parameters={"requeue": True, **extra},  # requeue: also after a node failure
                  # after a stop, ranks other than 0 end while rank 0 still writes last.pth: a cluster whose srun
                  # ends every task when one exits with a non-zero status (KillOnBadExit=1) would kill that write
                  srun_args=["--kill-on-bad-exit=0"])
    if job.gpus_per_node:
        params["gpus_per_node"] = job.gpus_per_node
    if args.mem_gb:
        params["mem"] = f"{args.mem_gb}GB"
    for name in ("partition", "account", "qos", "constraint", "exclude", "mail_type", "mail_user"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    return params


def torchrun_line(job: Plan) -> str:
    """The command that runs ``job`` on this machine without SLURM."""
    if job.script != "train.py":
        return shlex.join(["python", job.script, *job.argv])
    per_node = f"--nproc_per_node {job.tasks_per_node}"
    nodes = "" if job.nodes == 1 else f"--nnodes {job.nodes} --node_rank R --master_addr HOST --master_port PORT "
    return f"torchrun {nodes}{per_node} {shlex.join([job.script, *job.argv])}"


class Task(submitit.helpers.Checkpointable):
    """What each task of the job runs: ``SCRIPTS[script].main(argv)``. Picklable (the script's name and flags
    only): submitit stores it with the job and loads it again at every start."""

    def __init__(self, script: str, argv: list[str] | tuple[str, ...]):
        self.script, self.argv = script, list(argv)

    def __call__(self) -> None:
        env = submitit.JobEnvironment()
        if self.script == "train.py":
            export_rendezvous()
        with TimeLimitWarning(announce=env.global_rank == 0) as warning:
            print(f"task {env.global_rank} of {env.num_tasks} on {env.hostname} (job {env.job_id}, start "
                  f"{int(os.environ.get('SLURM_RESTART_COUNT', 0)) + 1}): {self.script} {shlex.join(self.argv)}",
                  flush=True)
            try:
                importlib.import_module(SCRIPTS[self.script]).main(self.argv)
            except SystemExit as e:
                if warning.received and e.code == STOPPED:  # stopped at a step and saved: the run is not over
                    warning.requeue()  # rank 0: submitit stores the task again, requeues the job and exits
                raise

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """What submitit stores for the next start: the same script and flags (``--resume auto`` continues)."""
        return submitit.helpers.DelayedSubmission(Task(self.script, self.argv))


def export_rendezvous() -> None:
    """Set torch.distributed's env:// variables from the job's (``submitit.helpers.TorchDistributedEnvironment``):
    RANK and WORLD_SIZE from SLURM_PROCID and SLURM_NTASKS, LOCAL_RANK from SLURM_LOCALID, MASTER_ADDR the first
    node of SLURM_JOB_NODELIST (127.0.0.1 when the job has one node: no name to resolve), MASTER_PORT drawn from
    the job id (the same on every task and at every start), or MASTER_PORT when it is set. CUDA_VISIBLE_DEVICES
    is left as SLURM set it: the process takes GPU LOCAL_RANK."""
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if env.local_world_size == env.world_size:
        os.environ["MASTER_ADDR"] = "127.0.0.1"


class TimeLimitWarning:
    """Inside the block, SIGUSR2 asks the script for its graceful stop, and :meth:`requeue` hands the job to
    submitit's own SIGUSR2 handler (checkpoint, ``scontrol requeue``, exit) once the run has saved.

    submitit's handler, run when the signal arrives, would requeue in the middle of a step and exit before
    last.pth is written; here the signal only records itself and sends this process SIGTERM, which the script
    turns into a stop at the next step on every rank (``engine.interrupt``). The SIGTERM is sent again every
    second until the block ends: the script ignores repeats, and a SIGTERM that came before it installed its
    handlers (the first seconds of a start) would otherwise be lost (submitit ignores SIGTERM)."""

    def __init__(self, announce: bool):
        self.announce = announce
        self.received = False
        self._previous = self._term = self._pid = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TimeLimitWarning":
        self._pid = os.getpid()
        self._previous = signal.signal(WARNING, self._handle)
        self._term = signal.getsignal(signal.SIGTERM)
        if self._term is signal.SIG_DFL:  # not started by submitit (which ignores it): the repeats must not kill
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        signal.signal(WARNING, self._previous)
        signal.signal(signal.SIGTERM, self._term)

    def _handle(self, signum: int, frame) -> None:
        if self.received or os.getpid() != self._pid:  # a forked DataLoader worker (SLURM signals every process
            return  # of the job): its trainer stops it
        self.received = True
        if self.announce:
            os.write(2, ANNOUNCE.encode())  # not print(): the handler may interrupt a write to sys.stderr
        self._thread = threading.Thread(target=self._stop, name="graceful-stop", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        while True:
            os.kill(os.getpid(), signal.SIGTERM)
            if self._done.wait(1.0):
                return

    def requeue(self) -> None:
        """Call submitit's SIGUSR2 handler now: on rank 0 it stores :meth:`Task.checkpoint`'s task, requeues the
        job and exits; on other ranks it returns. A job that reached its time limit ``--max_timeouts`` times
        is not requeued: one line says so."""
        if not callable(self._previous):
            return
        # the requeue ends this start of the job: SLURM sends SIGTERM to every process of the step, the scontrol
        # that submitit runs included, which must not die before it returns (an ignored signal stays ignored in
        # a child); this process is about to exit anyway
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self._previous(WARNING, None)
        except submitit.core.utils.UncompletedJobError:  # submitit: "timed-out too many times"
            print("not requeued: the job reached its time limit more than --max_timeouts times; last.pth holds the "
                  "run, submit the same command again to continue it", file=sys.stderr, flush=True)


def submit(args: argparse.Namespace, job: Plan, command: list[str]) -> str:
    """Submit ``job``; returns its id and writes job.json into the job folder. A refused submission leaves
    nothing behind (the folders it made, or the files it added to an existing job folder, are removed)."""
    top = job.job_dir  # the outermost folder this submission creates, if it creates any
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    before = set(job.job_dir.iterdir()) if job.job_dir.is_dir() else None
    said = io.StringIO()  # submitit prints sbatch's error; the UserError below says it in one line instead
    try:
        executor = submitit.SlurmExecutor(folder=job.job_dir, max_num_timeout=args.max_timeouts)
        executor.update_parameters(**parameters(args, job))
        with submission_environment(), contextlib.redirect_stderr(said):
            submitted = executor.submit(Task(job.script, job.argv))
    except BaseException as e:
        if before is None:
            shutil.rmtree(top, ignore_errors=True)
        else:
            for path in set(job.job_dir.iterdir()) - before:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        if isinstance(e, submitit.core.utils.FailedJobError):
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or ["(no message)"]
            raise UserError(f"sbatch refused the job: {lines[-1]}") from None
        raise
    record = {"job_id": submitted.job_id, "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(command), "cwd": os.getcwd(), "script": job.script, "argv": list(job.argv),
              "nodes": job.nodes, "tasks_per_node": job.tasks_per_node, "gpus_per_node": job.gpus_per_node,
              "sbatch_script": str(submitted.paths.submission_file), "python": sys.executable}
    with atomic_write(job.job_dir / "job.json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    return submitted.job_id


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, flags = split_argv(argv)
    args = parse_args(ours)
    with exit_on_error():
        job = plan(args, flags)
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise UserError(f"sbatch not found: no SLURM on this machine. Run without it: {torchrun_line(job)}")
        job_id = submit(args, job, ["python", "scripts/submit.py", *argv])
    print(f"submitted job {job_id}: {job.script} on {job.nodes} node(s) x {job.tasks_per_node} task(s), "
          f"--out_dir {job.out_dir}; logs and job.json in {job.job_dir} (tail -f {job.job_dir}/{job_id}_0_log.out)")
    return 0


if __name__ == "__main__":
    # run the module's own copy: submitit then stores the task as scripts.submit.Task (by reference, loaded from
    # the code at each start) instead of a copy of this file's __main__.Task
    from scripts.submit import main as submit_main

    sys.exit(submit_main())
