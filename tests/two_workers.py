"""Test harness: run a function on two gloo workers and collect what each rank returns."""

import multiprocessing

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from engine.distributed import find_free_port

WORLD = 2


def seeded_batch_and_layer(gen: torch.Generator, rows: int, dim: int, out: int,
                           scale: float = 1.0) -> tuple[torch.Tensor, torch.nn.Linear]:
    """Inputs [rows, dim] and a Linear dim -> out drawn from ``gen`` (in that order), so every rank
    seeding ``gen`` alike builds the same global batch and layer; weights are scaled by ``scale``."""
    x = torch.randn(rows, dim, generator=gen)
    layer = torch.nn.Linear(dim, out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, dim, generator=gen) * scale)
        layer.bias.copy_(torch.randn(out, generator=gen) * scale)
    return x, layer


def _worker(rank, port, outdir, fn, args):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.save(fn(rank, *args), f"{outdir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_two_workers(fn, *args, tmp_path) -> list:
    """``fn(rank, *args)`` on each rank of a gloo group of WORLD; what each returns, by rank.

    fn is module-level (pickled) and returns what torch.load(weights_only=True) reads back.
    forkserver: torch is imported once per session in the server (DDP also imports
    torch._dynamo when built); the workers fork from it in well under a second.
    """
    multiprocessing.set_forkserver_preload(["torch", "torch._dynamo"])
    mp.start_processes(_worker, args=(find_free_port(), str(tmp_path), fn, args), nprocs=WORLD,
                       start_method="forkserver")
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


def _ddp_worker(rank, inputs, fn):
    x, layer, *extra = inputs()
    local = len(x) // WORLD
    return fn(DistributedDataParallel(layer), layer, x[rank * local:(rank + 1) * local], *extra)


def ddp_and_one_process(inputs, fn, tmp_path) -> tuple[list, object]:
    """With ``x, layer, *extra = inputs()``: ``fn(DDP(layer), layer, x_rank, *extra)`` on each rank's
    slice of x, and ``fn(layer, layer, x, *extra)`` in this process; returns (by rank, this one)."""
    res = run_on_two_workers(_ddp_worker, inputs, fn, tmp_path=tmp_path)
    x, layer, *extra = inputs()
    return res, fn(layer, layer, x, *extra)
