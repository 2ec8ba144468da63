"""Getting batches onto the device without stalling it, and timing work the device has finished.

CUDA runs asynchronously: a kernel launch returns at once and a host timer read right after it
measures the launch, not the work. Two habits follow:

* :func:`synchronize` where a timer is read (once per logging interval, never per op);
* :func:`prefetch` copies the next batch on a side stream while the current one is computed, so the
  host-to-device copy (462 MB of float32 clips a step at the paper's batch of 64) overlaps compute
  instead of queueing in front of it on the default stream.

On the CPU both are plain: nothing to synchronise, nothing to copy.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished the work queued so far (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefetch(batches: Iterable[tuple], device: torch.device) -> Iterator[tuple]:
    """Yield each ``(tensor, *rest)`` of ``batches`` with ``tensor`` on ``device``.

    On CUDA, batch ``n + 1`` is copied on a side stream (``non_blocking``: from pinned memory the copy
    does not block the host) when the caller asks for it, after queueing its work on batch ``n``: the
    copy runs while the GPU still computes on ``n``, unless the caller waited for the GPU in between
    (a trainer's read of its values, once per logging interval), in which case that one copy runs
    alone. The compute stream waits for the copy before it uses the batch. ``rest`` is passed through
    untouched (e.g. counts that stay on the host). Elsewhere each batch is moved when it is asked for.
    """
    if device.type != "cuda":
        for tensor, *rest in batches:
            yield (tensor.to(device), *rest)
        return
    side = torch.cuda.Stream(device)

    def copy(batch: tuple) -> tuple:
        tensor, *rest = batch
        with torch.cuda.stream(side):
            tensor = tensor.to(device, non_blocking=True)
        return (tensor, *rest)

    iterator = iter(batches)
    for batch in iterator:
        ready = copy(batch)
        break
    else:
        return
    while True:
        compute = torch.cuda.current_stream(device)
        compute.wait_stream(side)  # the copy of `ready` is complete before the compute stream reads it
        ready[0].record_stream(compute)  # its memory is not reused by the side stream while compute uses it
        yield ready  # the caller queues its step on this batch ...
        try:  # ... and the copy of the next one runs beside it
            ready = copy(next(iterator))
        except StopIteration:
            return
