"""DataLoader settings for video clips: fork the workers, keep freed memory in the loading process, and
leave Ctrl-C to the main process; and pretraining's one loader for a whole run (:func:`pretrain_loader`).

**Fork.** A DataLoader starts its workers with the default start method of the process that builds
it. In a plain process on Linux that is ``fork``: a worker is a copy of the trainer, ready at once.
But inside a trainer started by ``torch.multiprocessing.spawn`` (``--multiprocessing-distributed``)
the default has become ``spawn``, and each worker starts a fresh interpreter that imports torch,
torchvision and the project again: seconds per worker, paid by every loader a run builds (the kNN
monitor builds two each time it runs). Measured on the CPU demo: the monitor took 8.3-8.7 s under
``--multiprocessing-distributed`` against 0.8-1.9 s in one process. :func:`loader_kwargs` asks for
``fork`` wherever the platform offers it safely (Linux), whatever the process's default. The
workers never touch CUDA, so forking a process that uses it is safe (PyTorch's own default).

**Freed memory.** Keep freed memory in the process instead of handing it back to the OS after every sample.

A pretraining sample allocates and frees several buffers of megabytes (decoded frames, crops,
float frames, the returned ``[3, 3, T, H, W]`` tensor). glibc's malloc serves blocks that large
with ``mmap`` and gives them back with ``munmap`` (or trims the heap top) when they are freed,
so the next sample touches fresh pages again: one page fault per 4 KiB, several milliseconds a
sample. Raising the mmap and trim thresholds makes malloc reuse the freed blocks instead, as a
caching allocator would. The price is that a process keeps its peak heap until it exits, which
is what DataLoader workers (short-lived, one per loader) and training processes do anyway.
"""

import ctypes
import ctypes.util
import multiprocessing
import sys

from torch.utils.data import DataLoader, Dataset

from datasets.index import DataError, FrameDecodeError
from engine.interrupt import worker_stop_signals
from engine.sampling import EpochStream, SeededSamples

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems (half its heap size)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed blocks below 32 MiB instead of returning them to the OS.

    Returns whether the setting took effect: False where the C library is not glibc (macOS,
    musl, Windows), which is harmless: only speed differs.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders of video clips: ``keep_freed_memory`` in the worker, which also
    leaves SIGINT to its main process (that stops the run at a step boundary) and ends quietly on SIGTERM
    (``engine.interrupt.worker_stop_signals``)."""
    keep_freed_memory()
    worker_stop_signals()


def worker_context():
    """The ``fork`` start method on Linux (see the module docstring), else None (the platform's default)."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def loader_kwargs(workers: int) -> dict:
    """DataLoader keyword arguments so that whichever process decodes the clips keeps freed
    memory: each worker (through ``worker_init_fn``), or this process when it loads the data
    itself (``workers == 0``); workers are forked on Linux, also inside spawned trainers."""
    if workers == 0:
        keep_freed_memory()
        return {}
    return {"worker_init_fn": loader_worker_init, "multiprocessing_context": worker_context()}


def pretrain_loader(dataset: Dataset, *, batch_size: int, workers: int, rank: int, world_size: int, seed: int,
                    strict: bool, pin_memory: bool) -> tuple[DataLoader, EpochStream]:
    """One DataLoader of ``dataset`` (a ``PretrainDataset``) for the whole run, over an :class:`EpochStream`
    (call its ``set_span`` first): its workers start once and never wait at an epoch boundary. An unreadable
    video is replaced by another (``SeededSamples``), unless ``strict``. Too few videos for one step of
    ``batch_size`` on each of ``world_size`` processes is a ``DataError``."""
    stream = EpochStream(dataset, batch_size=batch_size, num_replicas=world_size, rank=rank, seed=seed)
    if stream.steps_per_epoch < 1:
        raise DataError(f"{dataset.csv_file}: {len(dataset)} usable videos give {stream.epochs.num_samples} per "
                        f"process, fewer than --train_batch {batch_size} x {world_size} process(es); lower "
                        "--train_batch.")
    samples = SeededSamples(dataset, seed=seed, errors=(FrameDecodeError, OSError), strict=strict)
    loader = DataLoader(samples, batch_size=batch_size, sampler=stream, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=2 if workers > 0 else None, **loader_kwargs(workers))
    return loader, stream
