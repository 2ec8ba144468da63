"""Tests of engine.distributed: rank helpers and the two gathers, alone and on 2 gloo workers; the spawn launcher
carries user errors and interruptions back."""

import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from datasets.index import DataError
from engine.distributed import (Launch, all_gather_no_grad, all_gather_with_grad, find_free_port, get_rank,
                                get_world_size, is_main_process, launch)
from engine.errors import Interrupted
from engine.interrupt import GracefulStop
from tests.two_workers import run_on_two_workers, seeded_batch_and_layer

WORLD, LOCAL, DIM = 2, 3, 4


def _global_batch() -> tuple[torch.Tensor, torch.nn.Linear]:
    """Inputs [WORLD*LOCAL, DIM] and a layer, identical on every rank (fixed seed)."""
    gen = torch.Generator().manual_seed(7)
    x, layer = seeded_batch_and_layer(gen, WORLD * LOCAL, DIM, DIM)
    return x, layer


def _cross_sample_loss(z: torch.Tensor) -> torch.Tensor:
    """A loss that couples every pair of samples of the batch z [N, DIM]."""
    return torch.logsumexp(z @ z.T, dim=1).mean() + z.pow(2).mean()


def _worker(rank: int) -> dict:
    res = {"rank": get_rank(), "world": get_world_size(), "main": is_main_process()}
    mine = torch.arange(LOCAL * 2, dtype=torch.float32).reshape(LOCAL, 2) + 100 * rank
    nograd = all_gather_no_grad(mine.clone().requires_grad_())
    res["nograd"], res["nograd_requires_grad"] = nograd, nograd.requires_grad
    leaf = mine.clone().requires_grad_()
    gathered = all_gather_with_grad(leaf)  # [WORLD*LOCAL, 2]
    weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape)  # same on all ranks
    (weights * gathered).sum().backward()
    res["withgrad"], res["leaf_grad"] = gathered.detach(), leaf.grad
    x, layer = _global_batch()
    model = DistributedDataParallel(layer)
    loss = _cross_sample_loss(all_gather_with_grad(model(x[rank * LOCAL:(rank + 1) * LOCAL])))
    loss.backward()
    res["loss"], res["weight_grad"], res["bias_grad"] = loss.detach(), layer.weight.grad, layer.bias.grad
    return res


def test_helpers_without_process_group():
    assert not dist.is_initialized()
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    x = torch.randn(3, 2, requires_grad=True)
    gathered = all_gather_with_grad(x)
    (gathered * torch.tensor([1.0, 2.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 2.0]] * 3))
    detached = all_gather_no_grad(x)
    assert torch.equal(detached, x) and not detached.requires_grad


def test_find_free_port_can_be_bound():
    port = find_free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_two_gloo_workers(tmp_path):
    res = run_on_two_workers(_worker, tmp_path=tmp_path)
    expected = torch.cat([torch.arange(LOCAL * 2, dtype=torch.float32).reshape(LOCAL, 2) + 100 * r
                          for r in range(WORLD)])  # rank order
    weights = torch.arange(expected.numel(), dtype=torch.float32).reshape(expected.shape)
    x, layer = _global_batch()
    single = _cross_sample_loss(layer(x))  # one process, global batch
    single.backward()
    for r, got in enumerate(res):
        assert (got["rank"], got["world"], got["main"]) == (r, WORLD, r == 0)
        assert torch.equal(got["nograd"], expected) and not got["nograd_requires_grad"]
        assert torch.equal(got["withgrad"], expected)
        # every rank's loss copy contributes weights[slice]: the backward sums WORLD copies
        assert torch.equal(got["leaf_grad"], WORLD * weights[r * LOCAL:(r + 1) * LOCAL])
        torch.testing.assert_close(got["loss"], single.detach())
        torch.testing.assert_close(got["weight_grad"], layer.weight.grad)
        torch.testing.assert_close(got["bias_grad"], layer.bias.grad)


def _user_error_on_rank_1(ctx, csv_name: str) -> None:
    if ctx.rank == 1:
        raise DataError(f"{csv_name}: no rows; build it with scripts/make_csv.py")
    dist.barrier()  # rank 0 waits for the failing rank in a collective, as a trainer would


def test_a_spawned_workers_user_error_arrives_as_its_type():
    with pytest.raises(DataError) as info:
        launch(_user_error_on_rank_1, "x.csv", Launch(spawn=True, nproc=2))
    assert str(info.value) == "x.csv: no rows; build it with scripts/make_csv.py"


def _steps_until_stopped(ctx, ready_dir: str) -> None:
    with GracefulStop(notice=None) as stop:
        (Path(ready_dir) / str(ctx.rank)).touch()
        for step in range(1, 100_000):
            time.sleep(0.01)
            dist.all_reduce(torch.ones(1))
            if stop.should_stop():
                raise stop.interrupted(f"interrupted at step {step}" if ctx.is_main else "")


def sigterm_when_ready(folder: Path, workers: int = 2) -> None:
    """SIGTERM to this process (the launcher) once ``workers`` files are in ``folder``: each worker's 'ready'."""
    def wait_then_signal():
        deadline = time.monotonic() + 120
        while len(list(folder.iterdir())) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    threading.Thread(target=wait_then_signal, daemon=True).start()


def test_a_sigterm_to_the_launcher_stops_every_worker_at_one_step(tmp_path):
    sigterm_when_ready(tmp_path)
    with pytest.raises(Interrupted) as info:
        launch(_steps_until_stopped, str(tmp_path), Launch(spawn=True, nproc=2))
    assert info.value.status == 143 and re.fullmatch(r"interrupted at step \d+", str(info.value))


def _starting(ctx, ready_dir: str) -> None:
    """A worker still starting (no stop handlers yet): a SIGTERM ends it where it is."""
    (Path(ready_dir) / str(ctx.rank)).touch()
    time.sleep(60)


def test_a_stop_before_the_workers_take_it_is_an_interruption_not_a_traceback(tmp_path):
    """The launcher forwards its SIGTERM to workers that have not installed their handlers yet: they die of
    it, and the run ends as an interruption (one line, status 143), not as a crash of a worker."""
    sigterm_when_ready(tmp_path)
    tic = time.monotonic()
    with pytest.raises(Interrupted) as info:
        launch(_starting, str(tmp_path), Launch(spawn=True, nproc=2))
    assert info.value.status == 143 and "before the workers could save this step" in str(info.value)
    assert time.monotonic() - tic < 50  # the other worker was not waited for
