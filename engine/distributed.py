"""Rank helpers and the two all-gathers, the one place that handles ranks.

Every helper works without a process group (a plain single process): ranks are 0,
the world size is 1 and both gathers return their input. All ranks must pass tensors of
the same shape to a gather (equal local batches, e.g. a DistributedSampler with
``drop_last=True``).
"""

import argparse
import datetime
import os
import pickle
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.errors import Interrupted, UserError, number
from engine.interrupt import GracefulStop


def _distributed() -> bool:
    """Whether a default process group is up."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process in the default group; 0 without a process group."""
    return dist.get_rank() if _distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if _distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, the rank that logs and writes checkpoints."""
    return get_rank() == 0


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for tcp:// rendezvous in tests).

    The port is released before it is returned, so another process could take it in
    between; good enough for a local rendezvous started right away.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] of every rank along dim 0 in rank order -> [W*B, ...]."""
    out = x.new_empty((get_world_size() * x.shape[0], *x.shape[1:]))  # [W*B, ...]
    dist.all_gather_single(out, x.contiguous())
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients of every rank's copy of the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        return _gather(x)  # [W*B, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()  # [W*B, ...]; each rank holds the gradient of its own loss copy
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = get_rank() * ctx.batch
        return grad[start:start + ctx.batch]  # [B, ...]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Autograd-aware all-gather: ``x`` [B, ...] of every rank concatenated -> [W*B, ...].

    Gradient semantics: every rank computes the loss over the *global* batch, so each rank
    holds a copy of the same loss. The backward sums the gradients that all W copies give
    to this rank's slice (an all-reduce, then the local rows), i.e. W times the gradient
    of the global-batch loss. DDP then averages parameter gradients over the W ranks
    (divides by W), so every parameter receives exactly the single-process gradient of
    the global-batch loss. Identity without a process group or with world size 1.

    ``torch.distributed.nn.functional.all_gather`` has the same backward on gloo but is
    deprecated in the torch version we use, hence this small function.
    """
    if get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient: ``x`` [B, ...] of every rank -> detached [W*B, ...].

    For values that only steer the loss (queues, pseudo-labels, logging). Returns
    ``x.detach()`` without a process group or with world size 1.
    """
    if get_world_size() == 1:
        return x.detach()
    with torch.no_grad():
        return _gather(x.detach())


# ---------------------------------------------------------------------------------------------
# Starting processes. One entry point, `launch`, serves the three ways a run is started:
# a plain single process, `--multiprocessing-distributed` (one worker per GPU, or --nproc CPU
# workers, spawned here), and `torchrun` (env:// variables already set by the launcher).


@dataclass(frozen=True)
class Context:
    """Where this worker stands: its global rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


@dataclass(frozen=True)
class Launch:
    """How a run starts its processes (the ``distributed`` flags of an entry point).

    ``spawn``: one worker per GPU, or ``nproc`` CPU workers, on this machine (of ``nodes`` machines,
    this one being ``node_rank``); ``dist_url`` 'auto' picks a free port on 127.0.0.1 (one machine);
    ``backend`` 'auto' is NCCL with CUDA, else gloo.
    """

    spawn: bool = False
    nproc: int = 1
    nodes: int = 1
    node_rank: int = 0
    dist_url: str = "auto"
    backend: str = "auto"
    timeout: float = 1800.0  # seconds a collective may wait for the other ranks before it fails

    @property
    def timedelta(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout)


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`Launch`, in the group "distributed", spelled as the paper's command spells them
    (``--multiprocessing-distributed``, ``--world-size``, ``--rank``, ``--dist-url``); ``--dist-timeout`` is in
    minutes."""
    g = parser.add_argument_group("distributed")
    g.add_argument("--multiprocessing-distributed", action="store_true",
                   help="spawn one worker per GPU (NCCL, SyncBatchNorm), or --nproc CPU workers (gloo) without GPU")
    g.add_argument("--nproc", type=number(least=1), default=1, help="CPU workers spawned when no GPU is present")
    g.add_argument("--world-size", type=int, default=1, help="number of machines (nodes) for the spawn launcher")
    g.add_argument("--rank", type=int, default=0, help="index of this machine (node) for the spawn launcher")
    g.add_argument("--dist-url", default="auto",
                   help="rendezvous URL, e.g. tcp://HOST:PORT; 'auto' picks a free port on 127.0.0.1 (one machine)")
    g.add_argument("--dist-backend", default="auto", choices=["auto", "nccl", "gloo"],
                   help="auto: nccl with CUDA, else gloo")
    g.add_argument("--dist-timeout", type=number(float, above=0), default=30.0, metavar="MINUTES",
                   help="a collective that waits this long for the other processes fails, and the run ends with "
                        "one line naming the rank and the step (a hang becomes an error); a stop signal ends a "
                        "process stuck in one within min(60 s, half of this), saving nothing")


class CollectiveError(UserError):
    """A collective that failed: it timed out (a rank hangs or never came) or a peer process died."""


class PeerLost(CollectiveError):
    """A collective whose peer process went away (killed, or crashed) in the middle of it."""


PEER_LOST = "another rank went away in the middle of a collective (killed, or crashed)"


class WorkerDied(UserError):
    """A spawned worker that ended without a word: killed by a signal (``kill -9``, out of memory) or crashed."""


def collective_failure(error: BaseException) -> str | None:
    """What went wrong, when ``error`` is a failed collective of the gloo backend (a timeout or a peer that
    went away); None for any other error. NCCL's watchdog aborts the process itself on a timeout, with
    its own message."""
    text = str(error)
    if not isinstance(error, RuntimeError):
        return None
    if "Timed out" in text or "Application timeout" in text or "failed to pass monitoredBarrier" in text:
        return "a collective timed out (another rank hangs, or stopped before reaching it)"
    if "Detected mismatch between collectives" in text:  # TORCH_DISTRIBUTED_DEBUG=DETAIL's check
        return ("the ranks called different collectives (a rank-dependent branch: a bug of this code, please "
                f"report it with this message: {' '.join(text.split())[:300]})")
    if "Connection closed by peer" in text or "Connection reset by peer" in text or "Broken pipe" in text:
        return PEER_LOST
    return None


def _spawned(local_rank: int, nprocs: int, worker: Callable, payload, how: Launch, url: str, reports: str) -> None:
    """One spawned worker. Its user error or interruption is pickled into ``reports`` for the launcher,
    which raises it again (a process boundary keeps only the traceback's text otherwise). An
    interruption ends the process normally: ``mp.spawn`` would kill the other ranks (rank 0 while it
    saves) on a non-zero exit; a user error ends it with status 1, so that the other ranks, which may
    wait for this one in a collective, are stopped."""
    rank = how.node_rank * nprocs + local_rank
    world_size = how.nodes * nprocs
    dist.init_process_group(_backend(how.backend), init_method=url, world_size=world_size, rank=rank,
                            timeout=how.timedelta)
    try:
        worker(Context(rank, world_size, local_rank, _device(local_rank)), payload)
    except Interrupted as e:
        _report(reports, local_rank, e)
    except UserError as e:
        _report(reports, local_rank, e)
        raise
    finally:
        dist.destroy_process_group()


def _report(reports: str, local_rank: int, error: BaseException) -> None:
    with open(Path(reports) / f"{local_rank}.pickle", "wb") as f:
        pickle.dump(error, f)


def _reported(reports: str, first: int | None = None) -> BaseException | None:
    """The error a spawned worker reported: worker ``first``'s when it reported one, else the lowest one's."""
    files = sorted(Path(reports).glob("*.pickle"), key=lambda p: (int(p.stem) != first, int(p.stem)))
    if not files:
        return None
    with open(files[0], "rb") as f:
        return pickle.load(f)


class _ForwardStop(GracefulStop):
    """The launcher's handlers while its workers run: each SIGINT or SIGTERM it gets is passed on to them
    as a SIGTERM, a stop request that a worker already stopping ignores (a terminal's Ctrl-C reaches
    the workers directly, and a second SIGINT to them would stop them at once). A second SIGINT to the
    launcher itself ends it at once (``KeyboardInterrupt``); its workers then get SIGINT from
    ``mp.spawn``'s parent-death signal and stop at once too."""

    def __init__(self, pids: list[int]):
        super().__init__(notice=None)
        self.pids = pids

    def _handle(self, signum: int, frame) -> None:
        super()._handle(signum, frame)
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # already ended
                pass


_TRACKER_NOISE = "ignore:resource_tracker:UserWarning"
_STOPPED_EARLY = ("interrupted before the workers could save this step (while they started, or while one waited "
                  "for another in a collective); continue from the last checkpoint with --resume auto")


def _death(index: int, exit_code: int, nprocs: int, how: Launch) -> str:
    """One line on spawned worker ``index``, which ended with ``exit_code`` (negative: a signal) without a report."""
    who = f"worker {index} of {nprocs} on this machine (rank {how.node_rank * nprocs + index})"
    if exit_code < 0:
        name = signal.Signals(-exit_code).name
        cause = " (kill -9, or the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
        return f"{who} was killed by {name}{cause}"
    return f"{who} exited with status {exit_code} without reporting an error (its output above says why)"


def _silent_deaths(context, reports: str, first: int) -> list[int]:
    """The workers that a signal ended without a report (``first`` first, if it is one)."""
    dead = [i for i, p in enumerate(context.processes)
            if (p.exitcode or 0) < 0 and not (Path(reports) / f"{i}.pickle").exists()]
    return sorted(dead, key=lambda i: i != first)


def _spawn(worker: Callable, payload, how: Launch, nprocs: int, url: str) -> None:
    """``mp.spawn`` of ``nprocs`` workers that carries their user errors and interruptions back to here."""
    # multiprocessing's resource tracker (a process started below, with this process's warning options) warns
    # of the semaphores of a worker that was killed, after the launcher's last line: noise, not news
    if _TRACKER_NOISE not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_NOISE)
    with tempfile.TemporaryDirectory(prefix="mfo-launch-", ignore_cleanup_errors=True) as reports:
        context = mp.start_processes(_spawned, args=(nprocs, worker, payload, how, url, reports), nprocs=nprocs,
                                     join=False, start_method="spawn")
        with _ForwardStop(context.pids()) as forward:
            try:
                # wake up each second (a signal's handler runs here); when a worker fails, the others are
                # killed at once (grace 0): they may wait for it in a collective, and a SIGTERM would only
                # make them announce a stop they cannot reach
                while not context.join(timeout=1.0, grace_period=0):
                    pass
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
                reported = _reported(reports, first=e.error_index)
                silent = _silent_deaths(context, reports, e.error_index)
                if isinstance(reported, PeerLost) and silent and not forward.received:
                    # the others lost a peer in a collective: the peer that a signal killed is the news
                    index = silent[0]
                    raise WorkerDied(_death(index, context.processes[index].exitcode, nprocs, how)) from None
                if isinstance(reported, UserError):
                    raise reported from None
                if forward.received and not isinstance(e, mp.ProcessRaisedException):
                    raise Interrupted(_STOPPED_EARLY, forward.received) from None  # the stop killed a worker
                if isinstance(e, mp.ProcessExitedException):
                    stopped = (e.exit_code or 0) - 128  # a worker's own stop without saving (engine.interrupt)
                    if stopped in (signal.SIGINT, signal.SIGTERM):
                        raise Interrupted(_STOPPED_EARLY, stopped) from None
                    raise WorkerDied(_death(e.error_index, e.exit_code, nprocs, how)) from None
                raise
        reported = _reported(reports, first=0)
        if isinstance(reported, Interrupted):
            # the launcher's own signal, when it got one, is the one the user sent (its workers get SIGTERM)
            raise Interrupted(str(reported), forward.received or reported.signum) from None
        if forward.received:  # a stop before the workers could take it (while they started): they just ended
            raise Interrupted(_STOPPED_EARLY, forward.received)


def _torchrun_store(timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of torchrun's ``MASTER_ADDR:MASTER_PORT`` (what ``env://`` connects to), its keys
    under a prefix of the restart: after an elastic restart the agent's store still holds the first round's
    keys, and a restarted rank could read a dead peer's address from them before the peer rewrote it (gloo:
    "connectFullMesh failed ... Connection refused", about every other restart here)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts it: every rank a client
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                          is_master=not agent and os.environ["RANK"] == "0", timeout=timeout,
                          wait_for_workers=False)
    return dist.PrefixStore(f"mfo/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def launch(worker: Callable, payload, how: Launch = Launch()):
    """Run ``worker(ctx, payload)`` in every process this run needs; returns its result in a single process.

    Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) the process group comes from the environment;
    with ``how.spawn`` the workers are spawned here; otherwise one plain process runs the worker.
    ``payload`` (picklable: it travels to spawned workers) is passed through untouched.

    Spawned workers: a :class:`~engine.errors.UserError` one of them raises is raised here again, as
    the same type with the same message; an :class:`~engine.errors.Interrupted` that ends them (every
    rank raises it at the same step, see ``engine.interrupt``) is raised here with rank 0's line. While
    they run, a SIGINT or SIGTERM sent to this process is passed on to them (see :class:`_ForwardStop`).
    A worker that dies without a word (a signal, e.g. ``kill -9`` or the out-of-memory killer) ends the
    launcher with :class:`WorkerDied` naming it and the signal; the others are ended at once.

    Every collective fails after ``how.timeout`` seconds of waiting (``init_process_group``'s timeout):
    a hang becomes an error (see :func:`collective_failure`).
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        dist.init_process_group(_backend(how.backend), store=_torchrun_store(how.timedelta),
                                rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                timeout=how.timedelta)
        try:
            return worker(Context(dist.get_rank(), dist.get_world_size(), local_rank, _device(local_rank)), payload)
        finally:
            dist.destroy_process_group()
    if how.spawn:
        nprocs = torch.cuda.device_count() or how.nproc
        if how.dist_url == "auto":
            if how.nodes > 1:
                raise UserError("--world-size > 1 needs --dist-url tcp://HOST:PORT of the first machine")
            url = f"tcp://127.0.0.1:{find_free_port()}"
        else:
            url = how.dist_url
        if how.nodes > 1:  # the rendezvous waits (up to the timeout) until every machine has started
            print(f"machine {how.node_rank + 1} of {how.nodes} (--rank {how.node_rank}): waiting for the others at "
                  f"{url}", flush=True)
        _spawn(worker, payload, how, nprocs, url)
        return None
    return worker(Context(0, 1, 0, _device(0)), payload)


def data_parallel(model: torch.nn.Module, device: torch.device, timeout: datetime.timedelta,
                  find_unused_parameters: bool = False) -> torch.nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(model)`` over the default group's processes (a collective: every rank calls it).

    Under ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` (which wraps every process group to check that the ranks call
    the same collectives) torch 2.14's DDP constructor crashes (SIGSEGV) on the wrapped group; DDP then gets a
    group of the same processes made without the wrapper, and every other collective (the losses' gathers,
    the stop flag, the checkpoint's and the monitor's gathers) is still checked. ``timeout``: that group's, the
    default group's (a new group does not inherit it)."""
    group = None
    if dist.get_debug_level() == dist.DebugLevel.DETAIL:
        dist.set_debug_level(dist.DebugLevel.INFO)
        try:
            group = dist.new_group(timeout=timeout)
        finally:
            dist.set_debug_level(dist.DebugLevel.DETAIL)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, process_group=group,
        find_unused_parameters=find_unused_parameters)


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` in rank order (a collective); ``[obj]`` without a process group."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_workers(value: float) -> float:
    """Sum of a number over all ranks (a collective); the number itself without a process group."""
    if get_world_size() == 1:
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces CUDA tensors only
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()
