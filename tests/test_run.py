"""Tests of engine/run.py: the bookkeeping pretraining and the evaluation tools share."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.run import (Checkpointer, Finished, RunningMeans, RunState, StepLog, check_epochs, check_global_batch,
                        open_outputs, reads_at, resume_checkpoint, saved_world_size, seed_everything)
from engine.tracking import NonFiniteLossError


def test_running_means_weigh_each_value_by_its_own_count():
    means = RunningMeans()
    means.add({"loss": 2.0, "acc": 0.5}, weight=4)  # a batch of 4
    means.add({"loss": 5.0}, weight=2)  # acc not logged at this step
    assert means.means() == {"loss": (8 + 10) / 6, "acc": 0.5}
    assert means.counts == {"loss": 6, "acc": 4}


def test_run_state_round_trips_and_reads_a_checkpoint_without_counts():
    run = RunState(epoch=2, step_in_epoch=3, global_step=9, seconds=1.5, reference={"monitor_knn_top1": 0.2})
    run.add({"loss": 1.0})
    again = RunState()
    again.load_state_dict(run.state_dict())
    assert again == run
    old = {k: v for k, v in run.state_dict().items() if k != "epoch_counts"}  # before per-value counts
    again.load_state_dict(old)
    assert again.counts == {"loss": 3}


def test_reads_at_depends_on_shared_counters_only():
    assert [reads_at(g, s, 4, 3) for g, s in [(1, 1), (3, 3), (4, 4), (5, 1), (6, 2)]] == [False, True, True,
                                                                                          False, True]


def test_step_log_reads_once_adds_the_health_of_kept_outputs_and_stops_at_a_non_finite_loss():
    log = StepLog(lambda out: {"mean": out["z"].mean().item()})
    log.add(1, {"loss": torch.tensor(1.0)}, None, replaced=1)
    log.add(2, {"loss": torch.tensor(3.0)}, {"z": torch.ones(2)}, replaced=2)
    records, seconds = log.read()
    assert records == [{"loss": 1.0}, {"loss": 3.0, "mean": 1.0}] and seconds >= 0 and log.replaced == 3
    scalars = log.scalars(records, 2.0, clips_per_step=6)
    assert scalars["train/loss"] == 2.0 and scalars["train/mean"] == 1.0 and scalars["speed/clips_per_s"] == 6.0
    bad = StepLog()
    bad.add(7, {"loss": torch.tensor(float("nan"))}, None, replaced=0)
    with pytest.raises(NonFiniteLossError, match="global step 7"):
        bad.read()


def test_checkpointer_flushes_first_and_writes_a_snapshot(tmp_path):
    calls, weights = [], {"w": torch.zeros(2)}
    checkpoints = Checkpointer(tmp_path, flush=lambda: calls.append("flush"))
    checkpoints.save(lambda rngs: {"a.pth": {"w": weights["w"], "rng": rngs}, "b.pth": {"n": 1}})
    weights["w"].add_(1)  # training goes on: the file holds the values at save()
    checkpoints.close()
    assert calls == ["flush"]
    a = load_checkpoint(tmp_path / "a.pth")
    assert a["w"].tolist() == [0.0, 0.0] and len(a["rng"]) == 1 and load_checkpoint(tmp_path / "b.pth") == {"n": 1}


def test_the_epoch_check_refuses_a_shorter_run_and_names_a_finished_one():
    check_epochs(1, 3, 2, too_many="x", finished="done")  # mid-run: nothing to say
    check_epochs(2, 0, 2, too_many="x")  # at the end, the caller decides
    with pytest.raises(Finished, match="done"):
        check_epochs(2, 0, 2, too_many="x", finished="done")
    for done, step in [(3, 0), (2, 1)]:
        with pytest.raises(CheckpointError, match="too many"):
            check_epochs(done, step, 2, too_many="too many", finished="done")


def test_the_global_batch_check_reads_the_world_size_or_infers_it_from_an_older_file():
    new = {"world_size": 2, "rng": [{}, {}], "args": {"train_batch": 2}}
    old = {"rng": [{}, {}], "args": {"train_batch": 2}}  # before the world size was recorded
    assert saved_world_size(new) == saved_world_size(old) == 2
    for state in (new, old):
        check_global_batch(Path("last.pth"), state, 4, 1)
        with pytest.raises(CheckpointError, match=r"--train_batch 2 on 2 process\(es\), a global batch of 4; .* "
                                                  r"Resume with --train_batch 4"):
            check_global_batch(Path("last.pth"), state, 2, 1)


def test_seed_everything_seeds_python_numpy_and_torch():
    draws = []
    for _ in range(2):
        seed_everything(5)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]


def write_last(out: Path, epoch: int, step: int, epochs: int, **more) -> Path:
    """A last.pth as a run of ``--epochs`` flags writes it after ``epoch`` epochs and ``step`` steps."""
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"optimizer": {}, "epoch": epoch, "step_in_epoch": step, "global_step": 10 * epoch + step,
                     "args": {"epochs": epochs, "lr": 0.1, **more}}, out / "last.pth")
    return out / "last.pth"


def test_resume_checkpoint_finds_checks_and_describes_the_file(tmp_path):
    flags = {"epochs": 4, "lr": 0.1}
    resume = lambda **kw: resume_checkpoint(kw.pop("resume", "auto"), tmp_path, flags=kw.pop("flags", flags),  # noqa
                                            may_change=("epochs",), epochs_key="epochs", **kw)
    assert resume(resume="") == (None, None, [])
    assert resume() == (None, None, [f"--resume auto: no {tmp_path / 'last.pth'} yet, starting from the beginning"])
    path = write_last(tmp_path, epoch=2, step=3, epochs=4)
    found, state, lines = resume(first_epoch=1)
    assert found == path and state["global_step"] == 23
    assert lines == [f"resumed from {path}: epoch 3, step 3 of the epoch, global step 23"]  # epoch 3 of 1, 2, ...
    assert resume()[2] == [f"resumed from {path}: epoch 2, step 3 of the epoch, global step 23"]  # of 0, 1, ...
    assert resume(flags={"epochs": 6, "lr": 0.1})[2][1] == "extending the run of --epochs 4 to --epochs 6"
    assert resume(flags={"epochs": 3, "lr": 0.1})[2][1] == "shortening the run of --epochs 4 to --epochs 3"
    with pytest.raises(CheckpointError, match=r"has trained 2 epochs and 3 steps, more than --epoch 2: a run cannot be "
                                              r"shortened; give --epoch 3 or more"):  # epoch 2 is under way
        resume(flags={"epochs": 2, "lr": 0.1}, spelling={"epochs": "--epoch"})
    with pytest.raises(CheckpointError, match=r"other flags: --lr 0.1 -> 0.2"):
        resume(flags={"epochs": 4, "lr": 0.2})

    def refuse(where, saved):
        raise CheckpointError(f"{where} does not fit (global step {saved['global_step']})")

    with pytest.raises(CheckpointError, match=r"last.pth does not fit \(global step 23\)"):  # before the flags
        resume(flags={"epochs": 4, "lr": 0.2}, check=refuse)
    write_last(tmp_path, epoch=4, step=0, epochs=4)
    with pytest.raises(Finished, match=r"^nothing left to do: \S+last.pth is the end of a finished run of 4 epochs "
                                       r"\(tested\); to train longer, give a larger --epochs with --resume auto$"):
        resume(finished=" (tested)")
    _, state, lines = resume(finished=None, first_epoch=1)  # not finished for the caller (e.g. still to be tested)
    assert state["epoch"] == 4 and lines == [f"resumed from {path}: all 4 epochs trained, global step 40"]
    save_checkpoint({"model": {}, "epoch": 1}, tmp_path / "epoch_0000.pth")
    with pytest.raises(CheckpointError, match="holds model weights only .* resume from the run's last.pth"):
        resume(resume=str(tmp_path / "epoch_0000.pth"))


def test_open_outputs_removes_an_earlier_run_writes_the_flags_and_prints_headline_then_notes(tmp_path, capsys):
    import json

    (tmp_path / "log.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    tracker = open_outputs(tmp_path, flags={"lr": 0.1}, headline="a run -> here", overwrite=True,
                           notes=("first", None, "second"))
    tracker.close()
    assert capsys.readouterr().out.splitlines() == [f"a run -> here (every argument: {tmp_path / 'args.json'})",
                                                    f"--overwrite: removed log.jsonl from {tmp_path}", "first",
                                                    "second"]
    assert json.loads((tmp_path / "args.json").read_text())["args"] == {"lr": 0.1}
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "log.jsonl").exists()
    silent = open_outputs(tmp_path / "rank1", flags={}, headline="x", enabled=False)
    silent.close()
    assert capsys.readouterr().out == "" and not (tmp_path / "rank1").exists()
