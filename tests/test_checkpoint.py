"""Tests of engine.checkpoint: atomic saves (also under SIGKILL), safe loads, resume paths, RNG state."""
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine import checkpoint
from engine.checkpoint import (BackgroundWriter, CheckpointError, host_copy, link_checkpoint, load_checkpoint,
                               resolve_resume, rng_state, save_checkpoint, set_rng_state, unwrap)

ROOT = Path(__file__).resolve().parents[1]


class Foreign:
    """A class that a weights_only load must refuse to unpickle."""


def test_save_load_round_trip_leaves_no_temporary_file(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "args": {"lr": 0.1, "name": "x"}}
    save_checkpoint(state, tmp_path / "sub" / "last.pth")
    back = load_checkpoint(tmp_path / "sub" / "last.pth")
    assert torch.equal(back["model"]["w"], torch.arange(6.0)) and back["epoch"] == 3 and back["args"]["name"] == "x"
    assert os.listdir(tmp_path / "sub") == ["last.pth"]



@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to stand in for a full disk")
def test_full_disk_is_reported_with_the_space_needed(tmp_path, monkeypatch):
    save_checkpoint({"epoch": 1}, tmp_path / "last.pth")
    real_fdopen = os.fdopen

    def fdopen_full(fd, mode="r", *a, **k):  # the temporary file, but every write hits a full disk
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode, *a, **k)

    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last\.pth.*about 4 MiB.*MiB are free"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(1_048_576)}, tmp_path / "last.pth")
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def test_a_failed_write_names_the_real_sizes_the_file_and_the_flag(tmp_path, monkeypatch):
    def full_disk(state, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: SimpleNamespace(free=3 * 2**20 + 5))
    with pytest.raises(CheckpointError) as error:
        save_checkpoint({"w": torch.zeros(7000), "epoch": 1}, tmp_path / "last.pth")  # 28,000 bytes
    assert str(error.value) == (f"could not write checkpoint {tmp_path / 'last.pth'}: [Errno 28] No space left on "
                                f"device. It needs about 27 KiB and 3 MiB are free in {tmp_path}; free some space or "
                                "write to another folder (--out_dir). The previous file, if any, is intact.")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    with pytest.raises(CheckpointError, match=r"^could not write features \S+f\.pt: .* It needs about 100 bytes and "
                                              r"0 bytes are free in .*; free some space or write to another folder "
                                              r"\(--out\)\."):
        save_checkpoint({"f": torch.zeros(25)}, tmp_path / "f.pt", what="features", flag="--out")
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    save_checkpoint({"epoch": 1}, tmp_path / "last.pth")

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, tmp_path / "last.pth")
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


KILLED_WRITER = """
import sys, torch
from engine.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint({"step": 0, "w": torch.zeros(10)}, path)
print("ready", flush=True)
step = 0
while True:
    step += 1
    save_checkpoint({"step": step, "w": torch.full((4_000_000,), float(step))}, path)
"""


def test_sigkill_during_saves_leaves_a_loadable_last_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.5)  # several 16 MB saves, the kill lands during one of them
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)
    if state["step"] > 0:
        assert torch.all(state["w"] == state["step"]) and state["w"].numel() == 4_000_000


def test_link_checkpoint_shares_bytes_and_survives_replacement(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "epoch_0000.pth")
    link_checkpoint(tmp_path / "epoch_0000.pth", tmp_path / "last.pth")
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 1
    save_checkpoint({"epoch": 2}, tmp_path / "last.pth")  # replaces last.pth, not the epoch file
    assert load_checkpoint(tmp_path / "epoch_0000.pth")["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["epoch_0000.pth", "last.pth"]


def test_load_errors_are_readable(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pth: it is not an mfo checkpoint, "
                                              "or it is truncated") as info:
        load_checkpoint(tmp_path / "junk.pth")
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)  # not torch's unsafe advice
    save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:2000])  # an interrupted copy
    with pytest.raises(CheckpointError, match="cut.pth: it is not an mfo checkpoint, or it is truncated"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"obj": Foreign()}, tmp_path / "pickled.pth")  # arbitrary pickled objects are refused
    with pytest.raises(CheckpointError, match="pickled.pth: it holds pickled Python objects") as info:
        load_checkpoint(tmp_path / "pickled.pth")
    assert "weights_only" not in str(info.value)


def test_key_mismatch_counts_missing_unexpected_and_resized_keys():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4), "2.weight": torch.zeros(1)}
    assert checkpoint.key_mismatch(net, state) == (["1.bias", "1.weight"], ["2.weight"], ["0.bias"])
    assert checkpoint.key_mismatch(net, net.state_dict()) == ([], [], [])


def test_resolve_resume(tmp_path):
    assert resolve_resume("", tmp_path) is None and resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None
    save_checkpoint({}, tmp_path / "last.pth")
    assert resolve_resume("auto", tmp_path) == tmp_path / "last.pth"
    assert resolve_resume(str(tmp_path / "last.pth"), "elsewhere") == tmp_path / "last.pth"
    with pytest.raises(CheckpointError, match="--resume auto"):
        resolve_resume(str(tmp_path / "nope.pth"), tmp_path)


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unwrap_returns_plain_modules_unchanged():
    layer = torch.nn.Linear(2, 2)
    assert unwrap(layer) is layer


def test_background_writer_writes_in_order_and_raises_a_failed_write_later(tmp_path):
    """Writes run one at a time in submission order; the error of one reaches the caller at the next
    submit or wait, and a snapshot taken with host_copy does not follow later changes of the live tensor."""
    live = torch.zeros(3)
    snapshot = host_copy({"w": [live], "step": 1})
    live += 5  # training goes on while the snapshot is written
    order = []
    writer = BackgroundWriter()

    def slow_first():
        time.sleep(0.2)
        order.append("first")

    writer.submit(slow_first)
    writer.submit(lambda: (order.append("second"), save_checkpoint(snapshot, tmp_path / "a.pth")))
    writer.wait()
    assert order == ["first", "second"] and torch.equal(load_checkpoint(tmp_path / "a.pth")["w"][0], torch.zeros(3))

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once
    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.close()


def test_changed_flags_names_each_flag_old_and_new():
    saved = {"lr": 0.1, "epochs": 3, "schedule": [60, 80], "features": False, "dataset": None, "out_dir": "a"}
    current = {"lr": 0.01, "epochs": 5, "schedule": (60, 80), "features": True, "dataset": "ucf101", "out_dir": "b",
               "overwrite": False, "gallery": "one_clip"}
    assert checkpoint.changed_flags(saved, current, may_change=("epochs", "out_dir", "overwrite"),
                                    defaults={"gallery": "video"}) == [
        "--dataset (none) -> ucf101", "--features off -> on", "--gallery video -> one_clip", "--lr 0.1 -> 0.01"]
    # a flag the checkpoint predates, without a known default, cannot be compared; a removed flag is ignored
    assert checkpoint.changed_flags({"lr": 0.1, "old_flag": 1}, {"lr": 0.1, "new_flag": 2}, may_change=()) == []
    assert checkpoint.changed_flags({"n": 1}, {"n": True}, may_change=()) == ["--n 1 -> on"]


def test_check_resume_flags_refuses_in_one_line(tmp_path):
    checkpoint.check_resume_flags({"lr": 0.1, "epochs": 3}, {"lr": 0.1, "epochs": 9}, may_change=("epochs",),
                                  path=tmp_path / "last.pth")
    with pytest.raises(CheckpointError) as info:
        checkpoint.check_resume_flags({"lr": 0.1, "seq": 16, "epochs": 3}, {"lr": 0.2, "seq": 8, "epochs": 3},
                                      may_change=("epochs", "workers"), path=tmp_path / "last.pth")
    assert str(info.value) == (f"--resume {tmp_path / 'last.pth'} was written with other flags: --lr 0.1 -> 0.2, "
                               "--seq 16 -> 8. A resume keeps the flags of the run (only --epochs --workers may "
                               "change); give the checkpoint's values, or start a new run in another --out_dir")
