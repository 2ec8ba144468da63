"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (how clusters stop jobs) at a step boundary.

Inside ``with GracefulStop() as stop:`` the first SIGINT or SIGTERM is only recorded; the loop asks
``stop.should_stop()`` at its step boundaries, saves the checkpoint that resumes exactly at that
step, and raises ``stop.interrupted(line)`` (an ``engine.errors.Interrupted``), which the entry
point's ``engine.errors.exit_on_error`` turns into that one line and exit status 128 + the signal
(130 for SIGINT, 143 for SIGTERM).

Rules, and why:

* **A second SIGINT stops at once** (``KeyboardInterrupt``, status 130, nothing saved): the user
  pressed Ctrl-C again. **A SIGTERM after the first signal is ignored**: launchers and schedulers
  deliver one stop twice (torchrun's agent forwards a SIGTERM to workers that the terminal's Ctrl-C
  already reached; a scheduler signals every process of a job, launcher included, and the launcher
  forwards it), and their way to insist is SIGKILL.
* **Every process stops at the same step.** Under DDP a signal may reach one rank only;
  ``should_stop`` is a collective: an all-reduce (max) of (signal received, signal number) over the
  default process group (on the host: under NCCL a gloo group of the same processes), so every rank
  gets the same answer and the same exit status. Every rank must call it at the same points (e.g.
  after every optimizer step); it costs one all-reduce of two numbers between processes and never
  waits for the GPU, so a trainer can ask after every step. Without a process group it reads the
  local state and costs nothing.
* **DataLoader workers ignore SIGINT and end quietly on SIGTERM** (:func:`worker_stop_signals`,
  installed by ``datasets.loader``). The terminal's Ctrl-C reaches every process of its process
  group, workers included, and torch's worker loop exits on a ``KeyboardInterrupt``, which would turn
  the step being loaded into a "worker exited unexpectedly" error: workers leave SIGINT to their main
  process. SIGTERM must still end a worker: it is how multiprocessing ends daemonic children at
  interpreter exit (``terminate`` then ``join``) and how torch ends a worker that does not stop on its
  own; a worker that ignored it made a process that still held a loader wait forever at exit. It ends
  with status 0, because torch's main process raises, from its SIGCHLD handler and at any point of the
  step, when a worker dies of a signal or with another status, which would break the step and its
  save when a scheduler signals every process of a job.
* **A rank stuck in a collective still stops, within ``grace`` seconds** (opt-in, ``grace=``): a rank
  that waits in a C++ collective (for a peer that died or hangs) never returns to Python, so its
  handler never runs and the stop would wait for the process group's timeout (30 minutes). Python's
  C-level handler still writes the signal's number to :func:`signal.set_wakeup_fd`; a watcher thread
  reads it, and when the ranks have not agreed on the stop (``should_stop`` returned True) ``grace``
  seconds after the first signal, it writes one line (``where()`` says which rank, at which step) and
  ends the process with status 128 + the signal, saving nothing: the last checkpoint is kept and
  ``--resume auto`` continues from it. A second SIGINT ends it at once. DataLoader workers clear the
  inherited wakeup fd (:func:`worker_stop_signals`), so their signals never reach the watcher.
* Handlers are installed only in the main thread (Python runs them there only); elsewhere the
  object is inert and ``should_stop`` still takes part in the collective. The previous handlers are
  restored on exit.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Callable

import torch
import torch.distributed as dist

from engine.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NOTICE = "{name} received: stopping after the current step (Ctrl-C again to stop at once, without saving)"


def _end_quietly(signum: int, frame) -> None:
    os._exit(0)  # no cleanup: a worker's state is disposable, and an exception here would reach torch's loop


def worker_stop_signals() -> None:
    """In a DataLoader worker: ignore SIGINT and end with status 0 on SIGTERM (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_quietly)
    signal.set_wakeup_fd(-1)  # a forked worker inherits its parent's: its own signals are not the trainer's


def _host_group():
    """A process group that reduces CPU tensors: the default one, unless its backend is NCCL (CUDA tensors
    only), in which case a gloo group of the same processes (a collective to create: every rank calls this
    at the same point). Reducing the stop flag there costs no wait for the GPU's queued work, which a
    CUDA tensor read back to the host would."""
    if dist.get_backend() != "nccl":
        return None
    return dist.new_group(backend="gloo")


class GracefulStop:
    """SIGINT / SIGTERM ask the run to stop at its next step boundary (see the module docstring).

    ``notice``: the line written to stderr when the first signal arrives, ``{name}`` being the
    signal's name (None: quiet, e.g. on ranks other than 0). Use as a
    context manager; :meth:`request` records a signal as if it had arrived (tests, launchers)."""

    def __init__(self, notice: str | None = NOTICE, *, grace: float | None = None,
                 where: Callable[[], str] = lambda: "this process"):
        """``grace``: seconds after the first signal within which the ranks must agree on the stop, else the
        process ends without saving (None: wait as long as it takes); ``where()``: who is stuck, for that line."""
        self.notice = notice
        self.grace, self.where = grace, where
        self.received: int | None = None  # this process's first signal
        self.signum: int | None = None  # the signal the processes agreed on, once should_stop said so
        self._previous: dict[int, object] = {}
        self._group = False  # the process group of should_stop, made at its first call (False: not yet)
        self._agreed = threading.Event()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd: int = -1

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            if self.grace is not None:
                self._wakeup = socket.socketpair()
                self._wakeup[1].setblocking(False)
                self._previous_fd = signal.set_wakeup_fd(self._wakeup[1].fileno(), warn_on_full_buffer=False)
                threading.Thread(target=self._watch, args=(self._wakeup[0],), name="stop-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._agreed.set()  # stands the watcher down
            self._wakeup[1].close()  # its read returns b"": it ends
            self._wakeup = None

    def _watch(self, reader: socket.socket) -> None:
        """The watcher thread (see the module docstring): the signals' numbers arrive on ``reader``."""
        first, first_signum, interrupts = None, signal.SIGTERM, 0
        while True:
            timeout = None if first is None else max(0.0, first + self.grace - time.monotonic())
            reader.settimeout(timeout)
            try:
                data = reader.recv(64)
            except socket.timeout:
                data = None
            except OSError:
                return
            if self._agreed.is_set():
                return  # the stop is under way (or the block ended)
            if data == b"":
                return
            if data is None:  # grace seconds without an agreement: stuck
                signum = first_signum
                os.write(2, (f"\nerror: {self.where()} did not reach a step boundary within {self.grace:g} s of "
                             f"{signal.Signals(signum).name} (waiting for another process in a collective?): "
                             "stopping without saving; the last checkpoint is intact, continue with "
                             "--resume auto\n").encode())
                os._exit(128 + signum)
            for signum in data:
                if signum not in STOP_SIGNALS:
                    continue  # e.g. SIGCHLD from a DataLoader worker
                if first is None:
                    first, first_signum = time.monotonic(), signum
                elif signum == signal.SIGINT:
                    interrupts += 1
            if interrupts:  # a second Ctrl-C: the handler stops at once, unless the main thread is stuck
                if self._agreed.wait(2.0):
                    return  # it did: the block ended
                os.write(2, f"\nerror: {self.where()}: stopped at once (second SIGINT), nothing saved\n".encode())
                os._exit(128 + signal.SIGINT)

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.request(signum)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        # a SIGTERM after the first signal: the stop is under way (see the module docstring)

    def request(self, signum: int) -> None:
        """Record ``signum`` as this process's stop request (the first one wins)."""
        if self.received is not None:
            return
        self.received = signum
        if self.notice:
            line = self.notice.format(name=signal.Signals(signum).name) + "\n"
            os.write(2, line.encode())  # not print(): the handler may interrupt a write to sys.stderr

    def should_stop(self) -> bool:
        """Whether to stop now, the same answer on every rank (a collective under a process group).

        When True, :attr:`signum` holds the signal to report: the largest one any rank received."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if self._group is False:
                self._group = _host_group()
            flags = torch.tensor([float(self.received is not None), float(self.received or 0)], dtype=torch.float64)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)  # on the host: no wait for the GPU
            stop, signum = flags.tolist()
            if stop:
                self.signum = int(signum)
                self._agreed.set()
            return bool(stop)
        if self.received is not None:
            self.signum = self.received
            self._agreed.set()
        return self.received is not None

    @property
    def status(self) -> int:
        """Exit status for the agreed signal: 128 + its number."""
        if self.signum is None:
            raise RuntimeError("status is known once should_stop() returned True")
        return 128 + self.signum

    def interrupted(self, message: str) -> Interrupted:
        """The exception that ends the run with ``message`` (one line; '' on quiet ranks) and :attr:`status`."""
        if self.signum is None:
            raise RuntimeError("interrupted() is for after should_stop() returned True")
        return Interrupted(message, self.signum)
