"""Tests of train.py: command lines, a run crossing the graph split and the queue start, exact resume
under any number of loader workers, 1 vs 2 gloo workers, and the non-finite-loss stop."""
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from engine.checkpoint import load_checkpoint
from datasets.demo import make_demo_data

ROOT = Path(__file__).resolve().parents[1]
# 8 videos, 4 per batch: 2 steps per epoch; graph and whole-bank Sinkhorn from epoch 1.
TINY = ("--seq 8 --img_dim 32 --train_batch 4 --workers 0 --cluster 4 --queue_size 16 --channel 16 "
        "--epoch 2 --split 1 --queue_start 1 --lr_decay 1 --save_every 0 --seed 3")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> str:
    out = make_demo_data(tmp_path_factory.mktemp("demo") / "demo", videos=8, frames=24, seed=1)
    return str(out / "pretrain.csv")


def run(csv_file: str, out_dir: Path, extra: str = "") -> list[dict]:
    return train.main(shlex.split(f"{TINY} --csv_file {csv_file} --out_dir {out_dir} {extra}"))


def tb_scalars(out_dir: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(out_dir / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


KINETICS = ("--train_batch 64 --workers 8 --cluster 1000 --epoch 100 --lr_decay 70 --thres 0.05 "
            "--csv_file kinetics.csv --multiprocessing-distributed --split 20")
UCF = ("--train_batch 64 --workers 8 --cluster 200 --epoch 300 --lr_decay 200 -thres 0.05 "
       "--csv_file ucf_pretrain.csv --multiprocessing-distributed --split 50")  # sic: "-thres"


@pytest.mark.parametrize("command, cluster, epoch, lr_decay, split, csv", [
    (KINETICS, 1000, 100, 70, 20, "kinetics.csv"), (UCF, 200, 300, 200, 50, "ucf_pretrain.csv")])
def test_paper_readme_commands_parse(command, cluster, epoch, lr_decay, split, csv):
    args = train.parse_args(shlex.split(command))
    assert args.multiprocessing_distributed and args.train_batch == 64 and args.workers == 8
    assert (args.cluster, args.epoch, args.lr_decay, args.split, args.csv_file) == (cluster, epoch, lr_decay, split, csv)
    assert args.thres == 0.05
    # paper values are the defaults
    assert (args.seq, args.sample, args.img_dim, args.rate, args.lr, args.wd) == (16, 2, 112, 3.0, 1e-3, 1e-5)
    assert (args.queue_size, args.queue_start, args.channel, args.arch) == (1024, 10, 128, "r3d18")


def test_demo_flags_lose_to_explicit_ones():
    args = train.parse_args(["--demo", "--epoch", "9", "--thres", "0.2"])
    assert args.thres == 0.2
    assert args.epoch == 9 and args.seq == train.DEMO_DEFAULTS["seq"] and args.out_dir == "runs/demo"
    assert args.split < args.epoch and args.queue_start < args.epoch  # the demo runs every loss term


def test_missing_csv_is_a_readable_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.parse_args([])
    assert "--csv_file is required" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such file"):
        train.main(["--csv_file", str(tmp_path / "nope.csv")])


def test_run_crosses_split_and_resumes_exactly(csv_file, tmp_path):
    full = run(csv_file, tmp_path / "full")
    assert len(full) == 4 and all(math.isfinite(r["loss"]) for r in full)
    # graph terms only from --split (epoch 1 = steps 3, 4)
    assert [("graph_high" in r) for r in full] == [False, False, True, True]
    lines = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert lines[0]["lr"] == pytest.approx(1e-4)  # x0.1 after epoch --lr_decay 1 starts
    for name in ("last.pth", "epoch_0000.pth", "epoch_0001.pth"):
        assert (tmp_path / "full" / name).is_file()
    state = load_checkpoint(tmp_path / "full" / "last.pth")
    assert {"model", "optimizer", "scheduler", "bank", "epoch", "step_in_epoch", "global_step", "rng", "args",
            "commit"} <= set(state)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 4)
    assert not any(k.startswith("module.") for k in state["model"])
    assert state["args"]["cluster"] == 4 and len(state["rng"]) == 1
    assert tb_scalars(tmp_path / "full", "train/loss")[4] == pytest.approx(full[-1]["loss"])
    assert set(tb_scalars(tmp_path / "full", "train/n_clusters")) == set(range(1, 5))

    # stopped mid-epoch 0 with two loader workers, resumed with none: the same per-step losses
    first = run(csv_file, tmp_path / "resumed", "--max_steps 1 --workers 2")
    assert load_checkpoint(tmp_path / "resumed" / "last.pth")["step_in_epoch"] == 1
    rest = run(csv_file, tmp_path / "resumed", "--resume auto")
    assert len(first) == 1 and len(rest) == 3
    for a, b in zip(full, first + rest):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-6, (k, a[k], b[k])


def test_two_gloo_workers_match_one_worker_on_the_global_batch(csv_file, tmp_path):
    """With BatchNorm frozen (--freeze_bn: running statistics, so per-worker batch statistics cannot differ),
    2 workers x batch 2 see the same global batches as 1 worker x batch 4 and must give the same losses."""
    common = "--freeze_bn"
    one = run(csv_file, tmp_path / "one", common)
    subprocess.run([sys.executable, "train.py", *shlex.split(TINY), "--csv_file", csv_file, "--out_dir",
                    str(tmp_path / "two"), *shlex.split(common), "--train_batch", "2",
                    "--multiprocessing-distributed", "--nproc", "2"], cwd=ROOT, check=True, timeout=300)
    two = tb_scalars(tmp_path / "two", "train/loss")
    assert sorted(two) == list(range(1, 5))
    for step, record in enumerate(one, start=1):
        assert two[step] == pytest.approx(record["loss"], abs=1e-4)
    proto = tb_scalars(tmp_path / "two", "train/proto")
    assert proto[4] == pytest.approx(one[3]["proto"], abs=1e-4)
    state = load_checkpoint(tmp_path / "two" / "last.pth")
    assert state["global_step"] == 4 and len(state["rng"]) == 2  # every worker's generator state
    assert not any(k.startswith("module.") for k in state["model"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(csv_file, tmp_path, monkeypatch):
    real = train.mfo_objective
    calls = []

    def poisoned(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), terms) if len(calls) == 3 else (loss, terms)

    monkeypatch.setattr(train, "mfo_objective", poisoned)
    with pytest.raises(SystemExit, match=r"non-finite loss nan at global step 3 \(terms: .*inst="):
        run(csv_file, tmp_path / "nan", "--save_every 1")
    assert load_checkpoint(tmp_path / "nan" / "last.pth")["global_step"] == 2


def test_unreadable_video_is_replaced_and_counted_unless_strict(csv_file, tmp_path, capsys):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(Path(csv_file).parent, data)
    broken = sorted((data / "frames").glob("*/*/"))[0]
    for jpeg in broken.glob("*.jpg"):
        jpeg.write_bytes(b"not a jpeg")
    run(str(data / "pretrain.csv"), tmp_path / "lenient", "--max_steps 2")  # one epoch: every video once
    assert tb_scalars(tmp_path / "lenient", "data/replaced_videos")[2] >= 1
    assert str(broken.name) in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"cannot decode frame .*{broken.name}"):
        run(str(data / "pretrain.csv"), tmp_path / "strict", "--max_steps 2 --strict_data")


def test_objective_flags_parse_into_the_objective(capsys):
    args = train.parse_args(shlex.split("--csv_file x.csv --terms proto inst --tau 0.2 --proto_tau 0.3 --sk_eps 0.1 "
                                        "--sk_iters 5 --level_weights 1 0.4 0.2 --proto_weight 2 --thres 0.1"))
    assert train.objective_of(args) == train.Objective(terms=("inst", "proto"), tau=0.2, proto_tau=0.3, sk_eps=0.1,
                                                       sk_iters=5, level_weights=(1.0, 0.4, 0.2), proto_weight=2.0,
                                                       thres=0.1)
    assert train.objective_of(train.parse_args(["--csv_file", "x.csv"])) == train.Objective()  # paper defaults
    for bad, message in (("--terms inst colour", "invalid choice: 'colour'"), ("--tau 0", "--tau must be positive"),
                         ("--sk_iters -1", "--sk_iters must be positive"),
                         ("--level_weights 1 0 1", "--level_weights must be positive"),
                         ("--monitor_train_csv a.csv", "go together")):
        with pytest.raises(SystemExit):
            train.parse_args(shlex.split(f"--csv_file x.csv {bad}"))
        assert message in capsys.readouterr().err


def test_terms_switch_and_monitor_are_logged(csv_file, tmp_path):
    data = Path(csv_file).parent
    out = tmp_path / "inst"
    history = run(csv_file, out, f"--epoch 1 --terms inst --tau 0.1 --monitor_train_csv {data / 'train.csv'} "
                                 f"--monitor_test_csv {data / 'test.csv'}")
    assert len(history) == 2
    for record in history:  # the total is the instance term alone (weight 1), every other term still logged
        assert record["loss"] == pytest.approx(record["inst"], rel=1e-6)
        assert record["proto"] > 0 and "motion_mid" in record and "erank_pooled" in record
    line = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert line["objective"]["terms"] == ["inst"] and line["objective"]["tau"] == 0.1
    assert 0.0 <= line["monitor_knn_top1"] <= 1.0 and 1.0 <= line["monitor_erank"] <= 512
    assert line["erank_high"] == pytest.approx(sum(r["erank_high"] for r in history) / 2)
    assert set(tb_scalars(out, "monitor/knn_top1")) == {2}
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    state = load_checkpoint(out / "last.pth")
    assert state["args"]["terms"] == ["inst"] and state["args"]["tau"] == 0.1
