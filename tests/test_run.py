"""Tests of engine/run.py: the bookkeeping pretraining and the evaluation tools share."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import CheckpointError, load_checkpoint
from engine.run import (Checkpointer, Finished, RunningMeans, RunState, StepLog, check_epochs, check_global_batch,
                        reads_at, saved_world_size, seed_everything)
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
