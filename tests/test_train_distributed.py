"""train.py on several processes at its default flags, under the three ways to start them (the spawn
launcher, torchrun, two torchrun agents meeting at a c10d rendezvous as two machines would), and what
happens when a process hangs, dies or is signalled while another waits for it.

No test here sets ``--save_every 1`` or ``--max_steps``, which make every step a checkpoint on every
rank and hid a deadlock (a read of the logging interval that only rank 0 made). The runs read inside
an epoch (``--log_every 3`` of 4 steps), cross the graph split and the queue start, and run the monitor.
Every run has ``TORCH_DISTRIBUTED_DEBUG=DETAIL``, which checks that the ranks call the same collectives
(a mismatch fails at once with a message), and a wall-time limit far below the suite's: a hang fails one
test, with the output so far, instead of CI.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from datasets.demo import make_demo_data
from engine.checkpoint import load_checkpoint
from engine.distributed import find_free_port

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 240  # seconds any one multi-process run may take (about 30 s on 2 idle cores)
# 16 videos, a global batch of 4: 4 steps an epoch, reads at global steps 3 and 4 (epoch 0), 6 and 8 (epoch 1)
FLAGS = ("--arch s3d --seq 8 --img_dim 32 --workers 0 --cluster 4 --queue_size 16 --channel 16 --epoch 2 "
         "--split 1 --queue_start 1 --lr_decay 1 --seed 3 --log_every 3 --freeze_bn --dist-timeout 1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
SECONDS = re.compile(r"seconds$")  # wall times: train_seconds, monitor_seconds, monitor_probe_seconds


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("ddp") / "demo", videos=16, frames=24, seed=1)


def flags(data: Path, out_dir: Path, train_batch: int, extra: str = "") -> list[str]:
    return shlex.split(f"{FLAGS} --csv_file {data / 'pretrain.csv'} --monitor_train_csv {data / 'train.csv'} "
                       f"--monitor_test_csv {data / 'test.csv'} --out_dir {out_dir} --train_batch {train_batch} "
                       f"{extra}")


def environment(**extra: str) -> dict:
    """DETAIL's collective checks; one thread a process, as torchrun sets it (2 processes of 2 threads each
    on 2 cores, beside other work, spin in OpenMP's barriers and run several times slower)."""
    return {**os.environ, "TORCH_DISTRIBUTED_DEBUG": "DETAIL", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            **extra}


def start(command: list[str], **env: str) -> subprocess.Popen:
    """A launcher in its own process group (so that a hung one is killed whole)."""
    return subprocess.Popen(command, cwd=ROOT, env=environment(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen, limit: float = LIMIT) -> tuple[int, str]:
    """Its status and output; a run past ``limit`` seconds is killed and fails the test as a hang."""
    try:
        out, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"hung: no end within {limit} s; the output so far ends with:\n{out[-3000:]}")
    return process.returncode, out


def run_ok(*commands: list[str], limit: float = LIMIT, **env: str) -> list[str]:
    """Start the commands together (the agents of one run), wait for all; each must succeed."""
    processes = [start(command, **env) for command in commands]
    results = [finish(p, limit) for p in processes]
    for status, out in results:
        assert status == 0, out[-3000:]
    return [out for _, out in results]


def log_lines(out_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not SECONDS.search(k)} for line in lines]


def tb_losses(out_dir: Path) -> dict[int, float]:
    acc = EventAccumulator(str(out_dir / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    """The reference: one process with the global batch of 4."""
    out = tmp_path_factory.mktemp("one")
    train.main(flags(data, out, 4))
    return out


@pytest.fixture(scope="module")
def torchrun_run(data, tmp_path_factory) -> Path:
    """2 processes x 2 under torchrun, at the default flags."""
    out = tmp_path_factory.mktemp("torchrun")
    run_ok([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "train.py", *flags(data, out, 2)])
    return out


def assert_same_losses(run: Path, reference: Path) -> None:
    """Every interval's mean loss (read at steps 3, 4, 6, 8) and every epoch's averages within rounding of the
    reference's (a global batch's losses do not depend on how it is split across processes: the first step's
    agree to about 1e-6; then Adam, which scales every update to about the learning rate whatever the
    gradient's size, turns the rounding of the gradients' sums into weight differences, and these tiny runs'
    collapsed features have gradients near zero: the losses drift apart by up to about 2e-4 relative in 8
    steps); the monitor ran at step 0 and after each epoch."""
    ours, theirs = tb_losses(run), tb_losses(reference)
    assert sorted(ours) == sorted(theirs) == [3, 4, 6, 8]
    assert ours[3] == pytest.approx(theirs[3], rel=1e-4)  # steps 1 to 3
    for step in theirs:
        assert ours[step] == pytest.approx(theirs[step], rel=1e-3), step
    lines, expected = log_lines(run), log_lines(reference)
    assert [line["epoch"] for line in lines] == [-1, 0, 1]
    assert "graph_high" in lines[2] and "graph_high" not in lines[1]  # the graph split is crossed
    for line, ref in zip(lines, expected, strict=True):
        assert 0 <= line["monitor_probe_top1"] <= 1 and 0 <= line["monitor_knn_top1"] <= 1
        for name in ("loss", "inst", "proto", "align_high", "motion_mid", "graph_high", "monitor_erank"):
            if name in ref:
                assert line[name] == pytest.approx(ref[name], rel=1e-3, abs=1e-6), (line["epoch"], name)


@pytest.mark.parametrize("launcher", ["spawn", "torchrun", "two agents"])
def test_two_processes_at_default_flags_finish_with_the_losses_of_one(launcher, data, one_process, torchrun_run,
                                                                      tmp_path):
    """The paper's --multiprocessing-distributed, torchrun, and two machines (c10d rendezvous on 127.0.0.1):
    each finishes its 2 epochs and reaches the losses of one process on the same global batch."""
    if launcher == "torchrun":
        out = torchrun_run
    elif launcher == "spawn":  # one loader worker a process: forked inside a spawned trainer
        out = tmp_path / "spawn"
        run_ok([sys.executable, "train.py", *flags(data, out, 2, "--workers 1 --multiprocessing-distributed "
                                                                  "--nproc 2")])
    else:
        out = tmp_path / "agents"
        rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                      f"127.0.0.1:{find_free_port()}", "--rdzv_id", "agents"]
        run_ok(*[[*TORCHRUN, *rendezvous, "train.py", *flags(data, out, 2)]] * 2)
    assert_same_losses(out, one_process)
    state = load_checkpoint(out / "last.pth")
    assert state["global_step"] == 8 and len(state["rng"]) == 2


def test_elastic_restart_after_kill_9_ends_like_an_uninterrupted_run(data, torchrun_run, tmp_path):
    """torchrun --max-restarts 1 with --resume auto: rank 1 hangs before step 6 (as a stuck worker would),
    is killed with kill -9 once step 5's last.pth (mid-epoch 1) is on disk; the agent restarts both workers,
    which resume there and end with the weights and log.jsonl of the uninterrupted run.

    Without DETAIL's checks: in torch 2.14 its wrapper's helper group of the restarted workers looks up the
    addresses of the first round's processes in the agent's store and fails to connect ("Connection
    refused"); the restart is what this test is about, and the same run without it is checked above."""
    out = tmp_path / "elastic"
    process = start([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "--max-restarts", "1", "tests/faulty_train.py",
                     *flags(data, out, 2, "--resume auto --save_every 5")], MFO_TEST_STALL="1:6:120",
                    TORCH_DISTRIBUTED_DEBUG="OFF")
    deadline = time.monotonic() + LIMIT
    while not ((out / "last.pth").is_file() and load_checkpoint(out / "last.pth")["global_step"] == 5):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint at step 5"
        time.sleep(0.5)
    os.kill(torchrun_workers(process)[1], signal.SIGKILL)
    status, output = finish(process)
    assert status == 0, output[-3000:]
    assert "resumed from" in output and "global step 5" in output
    ours, theirs = load_checkpoint(out / "last.pth"), load_checkpoint(torchrun_run / "last.pth")
    assert ours["global_step"] == theirs["global_step"] == 8
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    assert log_lines(out) == log_lines(torchrun_run)


def torchrun_workers(agent: subprocess.Popen) -> dict[int, int]:
    """The pids of a torchrun agent's workers, by global rank (their RANK variable)."""
    workers = {}
    for pid in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
        variables = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                         if b"=" in item)
        if b"RANK" in variables:
            workers[int(variables[b"RANK"])] = int(pid)
    return workers


# the fault tests: 8 videos, 2 processes x 2, 2 steps an epoch
@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    return str(make_demo_data(tmp_path_factory.mktemp("small") / "demo", videos=8, frames=24, seed=1) / "pretrain.csv")


def spawned(csv_file: str, out_dir: Path, extra: str = "") -> list[str]:
    return [sys.executable, "tests/faulty_train.py", *shlex.split(
        f"--arch s3d --seq 8 --img_dim 32 --train_batch 2 --workers 0 --cluster 4 --queue_size 16 --channel 16 "
        f"--epoch 2 --split 1 --queue_start 1 --lr_decay 1 --seed 3 --csv_file {csv_file} --out_dir {out_dir} "
        f"--multiprocessing-distributed --nproc 2 {extra}")]


def wait_for(process: subprocess.Popen, path: Path) -> None:
    """Until ``path`` exists (the process running)."""
    deadline = time.monotonic() + LIMIT
    while not path.is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.2)


def workers_of(launcher: subprocess.Popen) -> list[int]:
    """The spawned trainers of a launcher (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_a_hang_becomes_one_line_naming_the_rank_and_the_step(small, tmp_path):
    """Rank 1 hangs before step 3; rank 0 waits in the step's all-gather until --dist-timeout (15 s) and the
    run ends with one line, status 1."""
    tic = time.monotonic()
    process = start(spawned(small, tmp_path / "hang", "--dist-timeout 0.25"), MFO_TEST_STALL="1:3:120")
    status, out = finish(process)
    assert status == 1 and time.monotonic() - tic < 100, out[-3000:]
    assert re.search(r"\nerror: rank 0 \(global step 3\): a collective timed out \(another rank hangs, or stopped "
                     r"before reaching it\); --dist-timeout is 0.25 min. The last checkpoint in \S+ is intact: "
                     r"continue with --resume auto\n", out), out[-3000:]


def test_sigterm_ends_a_run_stuck_in_a_collective_without_saving(small, tmp_path):
    """Rank 1 hangs before step 3, rank 0 waits for it in a collective: a SIGTERM to the launcher still ends the
    run within min(60 s, half the --dist-timeout of 30 s) = 15 s, status 143, with the line of the stuck rank;
    last.pth stays the one of step 2."""
    out_dir = tmp_path / "stuck"
    process = start(spawned(small, out_dir, "--dist-timeout 0.5 --keep_epochs 0"), MFO_TEST_STALL="1:3:300")
    wait_for(process, out_dir / "last.pth")  # epoch 0 is saved: the ranks are at step 3
    time.sleep(3)
    tic = time.monotonic()
    process.send_signal(signal.SIGTERM)
    status, out = finish(process)
    assert status == 143 and time.monotonic() - tic < 15 + 15, out[-3000:]
    assert re.search(r"error: rank 0 \(global step 3\) did not reach a step boundary within 15 s of SIGTERM "
                     r"\(waiting for another process in a collective\?\): stopping without saving", out), out[-3000:]
    assert out.rstrip().splitlines()[-1].startswith("interrupted before the workers could save this step"), out
    assert load_checkpoint(out_dir / "last.pth")["global_step"] == 2


def test_a_killed_worker_ends_the_launcher_with_one_line(small, tmp_path):
    """kill -9 of a spawned worker (as the out-of-memory killer does): one error line naming it, the signal and
    the checkpoint to continue from; no ProcessExitedException traceback."""
    out_dir = tmp_path / "killed"
    process = start(spawned(small, out_dir, "--keep_epochs 0"), MFO_TEST_STALL="1:3:300")
    wait_for(process, out_dir / "last.pth")
    os.kill(workers_of(process)[1], signal.SIGKILL)
    status, out = finish(process)
    assert status == 1 and "Traceback" not in out, out[-3000:]
    assert out.rstrip().splitlines()[-1] == (
        f"error: worker 1 of 2 on this machine (rank 1) was killed by SIGKILL (kill -9, or the kernel's "
        f"out-of-memory killer); the other workers were stopped. The last checkpoint is {out_dir / 'last.pth'} "
        f"(global step 2): continue with --resume auto")


def test_two_gloo_workers_stop_together_when_one_gets_the_signal(small, tmp_path):
    """SIGTERM to rank 1 only (a scheduler may signal one process), at the default flags: both ranks stop at
    the same step, rank 0 saves it, the launcher exits 143 with the one line."""
    out_dir = tmp_path / "signal"
    process = start(spawned(small, out_dir, "--epoch 50 --keep_epochs 0"))
    wait_for(process, out_dir / "last.pth")  # epoch 0 is saved: both ranks are in their loops, handlers set
    os.kill(workers_of(process)[1], signal.SIGTERM)
    status, out = finish(process)
    assert status == 143, out[-3000:]
    assert re.search(r"interrupted (at epoch \d+, step \d of the epoch|after epoch \d+); continue with "
                     r"--resume auto\n$", out), out[-3000:]
    state = load_checkpoint(out_dir / "last.pth")
    assert len(state["rng"]) == 2 and 2 <= state["global_step"] < 50 * 2
