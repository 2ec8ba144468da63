"""datasets.loader: malloc keeps freed blocks in the process (no page faults on reuse), loader setup."""

import multiprocessing
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from datasets.loader import loader_kwargs, loader_worker_init, worker_context

# malloc, touch and free a 16 MiB block 20 times; print the minor page faults the loop took.
_FAULTS = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys
    from datasets.loader import keep_freed_memory
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    size = 16 << 20
    def cycle():
        block = libc.malloc(size)
        libc.memset(block, 1, size)
        libc.free(block)
    cycle()  # first use: both runs fault the pages in once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        cycle()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_reuses_freed_blocks():
    pages = (16 << 20) // 4096
    assert _faults("plain") >= pages // 2  # glibc hands the block back to the OS at least once
    assert _faults("keep") < pages // 100  # kept: the block comes back with its pages in place


def test_loader_kwargs():
    assert loader_kwargs(2) == {"worker_init_fn": loader_worker_init, "multiprocessing_context": worker_context()}
    assert loader_kwargs(0) == {}  # this process loads the data: tuned in place


STATE = {"mark": "imported"}  # what a fresh interpreter sees; a trainer changes it before it builds a loader


class _Mark(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return STATE["mark"]


def _trainer(rank: int, out: str) -> None:
    """A trainer as --multiprocessing-distributed starts it: the loader's workers must be copies of it."""
    STATE["mark"] = "set in the trainer"
    loader = DataLoader(_Mark(), batch_size=None, num_workers=1, **loader_kwargs(1))
    method = (loader.multiprocessing_context or multiprocessing).get_start_method()
    Path(out).write_text(f"{method} {list(loader)}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is only chosen on Linux")
def test_workers_of_a_spawned_trainer_are_forked_not_spawned(tmp_path):
    """Inside a process started by torch.multiprocessing.spawn the default start method is spawn: each
    loader worker would be a fresh interpreter importing torch again (seconds, at every loader a run
    builds). The workers must instead be forks of the trainer, which see its state."""
    out = tmp_path / "seen.txt"
    mp.spawn(_trainer, args=(str(out),), nprocs=1, join=True)
    assert out.read_text() == "fork ['set in the trainer', 'set in the trainer']"


class _Dispositions(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return torch.tensor([signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                             signal.getsignal(signal.SIGTERM) == signal.SIG_IGN])


def test_loader_workers_leave_stop_signals_to_their_main_process():
    loader = torch.utils.data.DataLoader(_Dispositions(), num_workers=1, **loader_kwargs(1))
    assert next(iter(loader)).tolist() == [[True, True]]
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # this process keeps its handlers
