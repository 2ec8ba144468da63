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
        return [signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.getsignal(signal.SIGTERM).__name__]


def test_loader_workers_leave_ctrl_c_to_their_main_process_and_end_quietly_on_sigterm():
    loader = torch.utils.data.DataLoader(_Dispositions(), num_workers=1, batch_size=None, **loader_kwargs(1))
    assert next(iter(loader)) == [True, "_end_quietly"]
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # this process keeps its handlers


# A process that still holds a loader's iterator when it ends: multiprocessing ends its daemonic workers with
# SIGTERM and waits for them. Workers that ignored SIGTERM made such a process wait forever (a test run hung
# at exit); a worker that a SIGTERM ends with status 0 must not be an error in the main process either.
_LEAK = textwrap.dedent("""
    import os, signal, sys, time, torch
    from datasets.loader import loader_kwargs
    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 100
        def __getitem__(self, i):
            time.sleep(0.05)
            return i
    held = iter(torch.utils.data.DataLoader(Slow(), num_workers=2, batch_size=None, **loader_kwargs(2)))
    first = next(held)
    if sys.argv[1] == "kill":  # a scheduler's SIGTERM that reaches a worker; SIGCHLD comes to this process
        os.kill(held._workers[0].pid, signal.SIGTERM)
        time.sleep(1.0)
        print("survived", held._workers[0].exitcode, flush=True)
    print("leaving", first, flush=True)
""")


@pytest.mark.parametrize("mode", ["leak", "kill"])
def test_a_process_ends_while_its_loader_workers_live_and_a_sigterm_to_one_is_no_error(mode):
    done = subprocess.run([sys.executable, "-c", _LEAK, mode], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "leaving 0"
    if mode == "kill":
        assert "survived 0" in done.stdout
