"""engine.interrupt: the first SIGINT/SIGTERM asks for a stop at a step boundary, the same on every rank."""
import os
import signal
import threading

import pytest
import torch
import torch.distributed as dist

from engine.errors import Interrupted
from engine.interrupt import GracefulStop
from tests.two_workers import run_on_two_workers


def test_first_signal_is_recorded_and_handlers_are_restored(capfd):
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM and stop.should_stop() and stop.status == 143
        error = stop.interrupted("interrupted at epoch 1, step 2 of the epoch; continue with --resume auto")
        assert isinstance(error, Interrupted) and error.status == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert capfd.readouterr().err == ("SIGTERM received: stopping after the current step (Ctrl-C again to stop "
                                      "at once, without saving)\n")


def test_a_second_sigint_stops_at_once_a_later_sigterm_does_not():
    with GracefulStop(notice=None) as stop:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: recorded, no KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. torchrun's agent passing the same stop on: ignored
        assert stop.should_stop() and stop.status == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.getsignal(signal.SIGINT)  # any bytecode: the handler has run by now
    with GracefulStop(notice=None) as stop:  # a SIGTERM first, then Ctrl-C: at once
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.getsignal(signal.SIGINT)


def test_status_needs_a_decision():
    stop = GracefulStop()
    with pytest.raises(RuntimeError, match="should_stop"):
        stop.status
    stop.request(signal.SIGTERM)
    assert stop.should_stop() and stop.interrupted("x").signum == signal.SIGTERM


def test_outside_the_main_thread_it_installs_nothing():
    seen = {}

    def body():
        with GracefulStop() as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["stop"] = stop.should_stop()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"handler": signal.getsignal(signal.SIGINT), "stop": False}


SIGNALLED_STEP = 3


def _steps_until_stop(rank: int) -> dict:
    """Training-like steps on each rank; SIGTERM reaches rank 1 only, at step SIGNALLED_STEP."""
    with GracefulStop(notice=None) as stop:
        for step in range(1, 10):
            work = torch.ones(1)
            dist.all_reduce(work)  # the step's own collective
            if rank == 1 and step == SIGNALLED_STEP:
                os.kill(os.getpid(), signal.SIGTERM)
            if stop.should_stop():
                return {"step": step, "status": stop.status, "received": stop.received or 0}
    return {"step": -1, "status": 0, "received": 0}


def test_two_gloo_workers_stop_at_the_same_step_when_one_is_signalled(tmp_path):
    res = run_on_two_workers(_steps_until_stop, tmp_path=tmp_path)
    assert [r["step"] for r in res] == [SIGNALLED_STEP, SIGNALLED_STEP]
    assert [r["status"] for r in res] == [143, 143]
    assert [r["received"] for r in res] == [0, signal.SIGTERM]  # rank 0 never got the signal itself
