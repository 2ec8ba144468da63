"""Tests of train.py: command lines, a run crossing the graph split and the queue start, exact resume
(also after a crash between an epoch's log line and its checkpoint, and onto another number of
processes), 1 vs 2 gloo workers, the out_dir rule, readable errors and the non-finite-loss stop."""
import copy
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import engine.run
import train
from datasets import read_csv
from datasets.demo import make_demo_data
from datasets.index import write_csv
from engine.checkpoint import load_backbone, load_checkpoint, save_checkpoint
from engine.run import RunState
from evaluation.monitor import collapse_warning
from losses import PrototypeBank
from models import MFOModel
from tests.cli import error_line

ROOT = Path(__file__).resolve().parents[1]
# 8 videos, 4 per batch: 2 steps per epoch; graph and whole-bank Sinkhorn from epoch 1. S3D: the backbone
# with the smallest checkpoint (174 MB with Adam's state against r3d18's 396 MB) and the fastest on a CPU.
TINY = ("--arch s3d --seq 8 --img_dim 32 --train_batch 4 --workers 0 --cluster 4 --queue_size 16 --channel 16 "
        "--epoch 2 --split 1 --queue_start 1 --lr_decay 1 --save_every 0 --seed 3 --keep_epochs 0 --log_every 1")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> str:
    out = make_demo_data(tmp_path_factory.mktemp("demo") / "demo", videos=8, frames=24, seed=1)
    return str(out / "pretrain.csv")


def run(csv_file: str, out_dir: Path, extra: str = "") -> list[dict]:
    return train.main(shlex.split(f"{TINY} --csv_file {csv_file} --out_dir {out_dir} {extra}"))


def run_error(csv_file: str, out_dir: Path, extra: str = "") -> str:
    """The message of a run that must stop with a user error: one line `error: ...`."""
    return error_line(lambda: run(csv_file, out_dir, extra))


def log_lines(out_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(csv_file, tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted run of TINY with every epoch file: its folder and per-step records."""
    out_dir = tmp_path_factory.mktemp("full")
    return out_dir, run(csv_file, out_dir, "--keep_epochs 1")


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
    assert args.epoch == 9 and args.seq == 8 and args.out_dir == "runs/demo"
    assert args.split < args.epoch and args.queue_start < args.epoch  # the demo runs every loss term


def test_missing_csv_is_a_readable_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.parse_args([])
    assert "--csv_file is required" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such file"):
        train.main(["--csv_file", str(tmp_path / "nope.csv")])


def test_run_crosses_split_and_resumes_exactly(csv_file, full_run, tmp_path, monkeypatch, capsys):
    out_dir, full = full_run
    assert len(full) == 4 and all(math.isfinite(r["loss"]) for r in full)
    # graph terms only from --split (epoch 1 = steps 3, 4)
    assert [("graph_high" in r) for r in full] == [False, False, True, True]
    lines = log_lines(out_dir)
    assert [x["epoch"] for x in lines] == [0, 1]
    assert lines[0]["lr"] == pytest.approx(1e-4)  # x0.1 after epoch --lr_decay 1 starts
    assert lines[0]["loss"] == pytest.approx((full[0]["loss"] + full[1]["loss"]) / 2)
    state = load_checkpoint(out_dir / "last.pth")
    assert {"model", "optimizer", "scheduler", "bank", "epoch", "step_in_epoch", "global_step", "rng", "args",
            "commit"} <= set(state)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 4)
    assert not any(k.startswith("module.") for k in state["model"])
    assert state["args"]["cluster"] == 4 and len(state["rng"]) == 1
    assert tb_scalars(out_dir, "train/loss")[4] == pytest.approx(full[-1]["loss"])
    assert set(tb_scalars(out_dir, "train/n_clusters")) == set(range(1, 5))

    # stopped mid-epoch 0 with two loader workers; the resume crashes between epoch 0's log line and its checkpoint
    resumed = tmp_path / "resumed"
    first = run(csv_file, resumed, "--max_steps 1 --workers 2 --keep_epochs 2")
    assert load_checkpoint(resumed / "last.pth")["step_in_epoch"] == 1

    class Crash(Exception):
        pass

    def crash(state, path):
        raise Crash(path)

    monkeypatch.setattr(engine.run, "save_checkpoint", crash)
    with pytest.raises(Crash):
        run(csv_file, resumed, "--resume auto --keep_epochs 2")
    monkeypatch.undo()
    assert [x["epoch"] for x in log_lines(resumed)] == [0]  # the line whose checkpoint never came
    (resumed / ".last.pth.k1ll3d0x.tmp").write_bytes(b"\0" * 4096)  # what a kill during a save leaves
    capsys.readouterr()
    rest = run(csv_file, resumed, "--resume auto --keep_epochs 2")  # resumed with no loader workers
    assert re.search(r"removed .*\.last\.pth\.k1ll3d0x\.tmp \(0 MiB\), the temporary file", capsys.readouterr().out)
    assert len(first) == 1 and len(rest) == 3
    for a, b in zip(full, first + rest):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-6, (k, a[k], b[k])
    # the log as if nothing had happened: no repeated line, epoch 0 averages both of its steps
    got = log_lines(resumed)
    assert len(got) == len(lines)
    for want, line in zip(lines, got):
        assert line.keys() == want.keys() and line.pop("objective") == want.pop("objective")
        assert line.pop("train_seconds") > 0 and want.pop("train_seconds") > 0  # wall time: not reproducible
        assert line == pytest.approx(want, abs=1e-6)
    names = sorted(p.name for p in resumed.iterdir())  # --keep_epochs 2: epoch 1 only; no temporary or lock file
    assert names == ["args.json", "epoch_0001.pth", "last.pth", "log.jsonl", "tensorboard"]


# the keys of a last.pth written before checkpoints recorded their world size (TINY --max_steps 1, commit 227e8a3)
OLD_LAST_KEYS = {"args", "bank", "commit", "epoch", "epoch_counts", "epoch_replaced", "epoch_seconds", "epoch_sums",
                 "global_step", "model", "monitor_reference", "optimizer", "rng", "scheduler", "step_in_epoch", "videos"}


def test_a_last_pth_of_the_format_before_world_size_resumes_like_an_uninterrupted_run(csv_file, full_run, tmp_path):
    """A last.pth records the number of processes that wrote it. One of the older format (no world size: it
    was inferred from the random states) still resumes and ends like the uninterrupted run. The old file
    itself is 166 MB, too large to keep here: the test makes it from a new one by deleting the key, and
    checks that what remains is exactly the old file's key set (OLD_LAST_KEYS, read from a file the code
    before the change wrote)."""
    _, full = full_run
    out_dir = tmp_path / "old"
    first = run(csv_file, out_dir, "--max_steps 1")
    state = load_checkpoint(out_dir / "last.pth")
    assert state.pop("world_size") == 1 and set(state) == OLD_LAST_KEYS
    save_checkpoint(state, out_dir / "last.pth")
    rest = run(csv_file, out_dir, "--resume auto")
    assert len(first) == 1 and len(rest) == 3
    for a, b in zip(full, first + rest):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-6, (k, a[k], b[k])
    assert load_checkpoint(out_dir / "last.pth")["world_size"] == 1


def test_epoch_files_hold_what_evaluation_needs_and_last_holds_the_rest(full_run, tmp_path, csv_file):
    out_dir, _ = full_run
    weights = load_checkpoint(out_dir / "epoch_0000.pth")
    assert set(weights) == {"model", "bank", "epoch", "global_step", "args", "commit"}
    assert (weights["epoch"], weights["global_step"]) == (1, 2)
    last, final = load_checkpoint(out_dir / "last.pth"), load_checkpoint(out_dir / "epoch_0001.pth")
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())
    assert not all(torch.equal(weights["model"][k], v) for k, v in last["model"].items())
    # Adam keeps two moments per weight: the epoch file is about a third of last.pth
    assert (out_dir / "epoch_0000.pth").stat().st_size < 0.4 * (out_dir / "last.pth").stat().st_size
    backbone = MFOModel("s3d", channel=16, cluster=4).backbone
    assert load_backbone(backbone, out_dir / "epoch_0000.pth")["summary"].startswith("loaded ")
    err = run_error(csv_file, tmp_path / "from_epoch", f"--resume {out_dir / 'epoch_0000.pth'}")
    assert "holds model weights only" in err and "resume from the run's last.pth" in err


def test_resume_from_a_foreign_file_is_one_line(csv_file, full_run, tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    err = run_error(csv_file, tmp_path / "a", f"--resume {junk}")
    assert err == (f"error: cannot read checkpoint {junk}: it is not an mfo checkpoint, or it is truncated (an "
                   "interrupted copy or download); pass a complete file written by train.py, eval_linear.py or "
                   "finetune.py")
    # a checkpoint of another --arch: the line and the counts; the key names only with --verbose
    state = load_checkpoint(full_run[0] / "epoch_0000.pth")
    r3d18 = MFOModel("r3d18", channel=16, cluster=4).state_dict()
    # the check reads the key names and shapes: r3d18's names with one-number tensors keep the file small
    other = {"model": {k: torch.zeros(1) for k in r3d18}, "optimizer": {}, "rng": [{}],
             "args": {**state["args"], "arch": "r3d18"}}
    save_checkpoint(other, tmp_path / "r3d18.pth")
    err = run_error(csv_file, tmp_path / "b", f"--resume {tmp_path / 'r3d18.pth'}")
    shared = set(r3d18) & set(state["model"])
    assert re.fullmatch(rf"error: --resume \S+r3d18.pth does not fit this model: it was written with --arch r3d18, "
                        rf"--channel 16, --cluster 4, this run has --arch s3d, --channel 16, --cluster 4 "
                        rf"\({len(state['model']) - len(shared)} missing, {len(r3d18) - len(shared)} unexpected, "
                        rf"{len(shared)} resized keys; --verbose lists them\); give the checkpoint's flags", err), err
    capsys.readouterr()
    run_error(csv_file, tmp_path / "b", f"--resume {tmp_path / 'r3d18.pth'} --verbose")
    listed = capsys.readouterr().err
    assert "backbone.stem.0.weight" in listed and "backbone.high.14.branch0.0.weight" in listed
    assert os.listdir(tmp_path / "a") == os.listdir(tmp_path / "b") == []  # refused before any output; lock removed


def test_a_run_in_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(csv_file, full_run, tmp_path,
                                                                                   capsys):
    out_dir, _ = full_run
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    err = run_error(csv_file, out_dir)
    assert re.fullmatch(rf"error: --out_dir {re.escape(str(out_dir))} already holds a run \(args.json, "
                        r"epoch_0000.pth, epoch_0001.pth, last.pth and 2 more\): continue it with --resume auto, start it "
                        r"again with --overwrite \(deletes its checkpoints and logs\), or pick another --out_dir", err)
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == before  # nothing touched
    again = tmp_path / "again"
    again.mkdir()
    (again / "log.jsonl").write_text('{"epoch": 0}\n')
    (again / "epoch_0007.pth").write_bytes(b"an older run")
    (again / "notes.txt").write_text("the user's own file")
    capsys.readouterr()
    run(csv_file, again, "--overwrite --max_steps 1")
    out = capsys.readouterr().out
    assert "--overwrite: removed epoch_0007.pth, log.jsonl" in out and "warning: --img_dim 32 gives s3d" in out
    assert sorted(p.name for p in again.iterdir()) == ["args.json", "last.pth", "notes.txt", "tensorboard"]


def test_amp_losses_are_within_1e3_of_float32_on_the_same_batch():
    """train_step with bfloat16 autocast (what --amp does on CUDA, here on the CPU) against float32 train_step on
    the same batch and the same backbone maps (the bfloat16 maps of the autocast run, cast to float32): the
    backbone is the only part in bfloat16, so every loss term and the pushed prototype logits agree within
    1e-3 (before, the heads, the prototype layer and Sinkhorn's input were bfloat16: the total 6e-3 off)."""
    torch.manual_seed(0)
    model = MFOModel("r3d18", channel=16, cluster=8)
    clips = torch.randn(4, 3, 3, 8, 32, 32)
    maps, results = [], []
    for amp in (True, False):
        net = copy.deepcopy(model)
        if amp:
            net.backbone.register_forward_hook(lambda module, inputs, output: maps.extend(output))
        else:  # the float32 run continues from the very maps of the autocast run
            net.backbone.register_forward_hook(lambda module, inputs, output: tuple(m.detach().float() for m in maps))
        bank = PrototypeBank(size=16, cluster=8, generator=torch.Generator().manual_seed(1))
        loss, terms = train.train_step(net, torch.optim.Adam(net.parameters()), bank, clips, use_graph=True,
                                       use_queue=True, freeze_prototypes=False, objective=train.Objective(), amp=amp)
        results.append(({"loss": loss.detach(), **terms}, bank.queue.clone()))
    assert {m.dtype for m in maps} == {torch.bfloat16}  # the backbone did run in bfloat16
    (got, amp_queue), (want, queue) = results
    for name, value in want.items():
        if not name.endswith("_acc") and name != "n_clusters":  # counts may flip on a near tie
            assert abs(got[name] - value) < 1e-3, (name, got[name], value)
    assert amp_queue.dtype == torch.float32 and (amp_queue - queue).abs().max() < 1e-3


def test_sample_and_img_dim_are_checked_against_the_model(capsys):
    for argv, reason in ((["--sample", "3"], "--sample 3: must be 2, the model and the losses use exactly clips a, b"),
                         (["--img_dim", "7"], "--img_dim 7: below 32 pixels the last feature map of r3d18"),
                         (["--arch", "r2plus1d18", "--img_dim", "15"], "--img_dim 15: below 16 pixels"),
                         (["--resume", "auto", "--overwrite"], "give one of them")):
        with pytest.raises(SystemExit) as info:
            train.parse_args(["--csv_file", "x.csv", *argv])
        assert info.value.code == 2 and reason in capsys.readouterr().err
    assert train.parse_args(["--csv_file", "x.csv", "--arch", "r2plus1d18", "--img_dim", "16"]).img_dim == 16
    assert "one real position a side" in train.img_dim_warning("r3d18", 63)
    assert train.img_dim_warning("r3d18", 64) is None and train.img_dim_warning("r2plus1d18", 32) is None


def test_two_gloo_workers_match_one_worker_and_one_process_continues_their_run(csv_file, tmp_path, capsys):
    """With BatchNorm frozen (--freeze_bn: running statistics, so per-worker batch statistics cannot differ),
    2 workers x batch 2 (at the default --save_every and without --max_steps: see test_train_distributed.py)
    see the same global batches as 1 worker x batch 4 and give the same losses; one process with batch 4
    continues their run at the same sample; another global batch is refused."""
    common = "--freeze_bn"
    one = run(csv_file, tmp_path / "one", common)
    subprocess.run([sys.executable, "train.py", *shlex.split(TINY), "--csv_file", csv_file, "--out_dir",
                    str(tmp_path / "two"), *shlex.split(common), "--train_batch", "2", "--epoch", "1",
                    "--multiprocessing-distributed", "--nproc", "2"], cwd=ROOT, check=True, timeout=180,
                   env={**os.environ, "TORCH_DISTRIBUTED_DEBUG": "DETAIL"})
    state = load_checkpoint(tmp_path / "two" / "last.pth")
    assert state["global_step"] == 2 and len(state["rng"]) == 2  # every worker's generator state
    assert not any(k.startswith("module.") for k in state["model"])
    capsys.readouterr()
    rest = run(csv_file, tmp_path / "two", f"{common} --resume auto")  # 1 process x 4: epoch 1
    assert "written by 2 process(es), this run has 1: it continues at the same sample" in capsys.readouterr().out
    two = tb_scalars(tmp_path / "two", "train/loss")
    assert sorted(two) == list(range(1, 5))
    for step, record in enumerate(one, start=1):
        assert two[step] == pytest.approx(record["loss"], abs=1e-5)
    for a, b in zip(one[2:], rest, strict=True):
        assert b["proto"] == pytest.approx(a["proto"], abs=1e-5) and b["inst"] == pytest.approx(a["inst"], abs=1e-5)
    err = run_error(csv_file, tmp_path / "two", f"{common} --resume auto --train_batch 2")
    assert re.fullmatch(r"error: --resume \S+last.pth was written with --train_batch 4 on 1 process\(es\), a global "
                        r"batch of 4; this run has --train_batch 2 on 1 \(2\), so its steps would cover other "
                        r"samples. Resume with --train_batch 4, or start a new run in another --out_dir", err), err


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
    # the error of a loader worker, not the loader's wrapping of it: one line
    err = run_error(str(data / "pretrain.csv"), tmp_path / "strict", "--max_steps 2 --strict_data --workers 2")
    assert re.fullmatch(rf"error: cannot decode frame \S+{broken.name}/image_\d+\.jpg: .*; re-extract this video "
                        r"with scripts/extract_frames.py or drop it from the CSV", err), err


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


def test_terms_switch_and_monitor_are_logged(csv_file, tmp_path, capsys):
    data = Path(csv_file).parent
    out = tmp_path / "inst"
    history = run(csv_file, out, f"--epoch 1 --terms inst --tau 0.1 --monitor_train_csv {data / 'train.csv'} "
                                 f"--monitor_test_csv {data / 'test.csv'}")
    printed = capsys.readouterr().out.splitlines()
    assert len(history) == 2
    for record in history:  # the total is the instance term alone (weight 1), every other term still logged
        assert record["loss"] == pytest.approx(record["inst"], rel=1e-6)
        assert record["proto"] > 0 and "motion_mid" in record and "erank_pooled" in record
    init, line = log_lines(out)  # the monitor at initialisation (step 0), then epoch 0
    assert (init["epoch"], init["global_step"]) == (-1, 0) and 0.0 <= init["monitor_knn_top1"] <= 1.0
    assert line["objective"]["terms"] == ["inst"] and line["objective"]["tau"] == 0.1
    assert 0.0 <= line["monitor_knn_top1"] <= 1.0 and 1.0 <= line["monitor_erank"] <= 512
    assert line["monitor_erank"] != init["monitor_erank"]  # two steps of training moved the features
    assert line["erank_high"] == pytest.approx(sum(r["erank_high"] for r in history) / 2)
    assert tb_scalars(out, "monitor/erank") == pytest.approx({0: init["monitor_erank"], 2: line["monitor_erank"]})
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    state = load_checkpoint(out / "last.pth")
    assert state["args"]["terms"] == ["inst"] and state["args"]["tau"] == 0.1
    # the terminal: the run in one line (every argument in args.json), the epoch's few numbers, what was made
    saved = json.loads((out / "args.json").read_text())
    assert saved["args"] == json.loads(json.dumps(state["args"])) and "git_commit" in saved
    assert printed[0] == (f"pretraining s3d on {csv_file} (8 videos, 2 steps an epoch): 1 epochs, global batch 4 "
                          f"(4 x 1 process(es)), --seq 8 --img_dim 32 --lr 0.001; writing {out} (every argument: "
                          f"{out / 'args.json'})")
    epoch = next(x for x in printed if x.startswith("epoch 0: "))
    clips_s = 3 * 4 * 2 / line["train_seconds"]
    assert epoch == (f"epoch 0: loss {line['loss']:.4f}, probe {line['monitor_probe_top1']:.3f} (step 0: "
                     f"{init['monitor_probe_top1']:.3f}), kNN {line['monitor_knn_top1']:.3f} (step 0: "
                     f"{init['monitor_knn_top1']:.3f}), erank {line['monitor_erank']:.1f}, {clips_s:.1f} clips/s, "
                     f"{line['train_seconds']:.1f} s")
    assert printed[-3:] == [f"done: {out / 'last.pth'}",
                            f"the monitor: linear probe {line['monitor_probe_top1']:.3f} (step 0: "
                            f"{init['monitor_probe_top1']:.3f}), kNN {line['monitor_knn_top1']:.3f} (step 0: "
                            f"{init['monitor_knn_top1']:.3f})",
                            f"next: python eval_linear.py --pretrained {out / 'last.pth'} --train_csv TRAIN.csv "
                            "--test_csv TEST.csv (docs/evaluation.md)"]


def test_augmentation_flags_reach_the_dataset(csv_file, capsys):
    args = train.parse_args(["--csv_file", csv_file])
    assert (args.jitter, args.gray_p, args.flip_p) == ([0.5, 0.5, 0.5, 0.25], 0.5, 0.5)  # the paper's by default
    args = train.parse_args(shlex.split(f"{TINY} --csv_file {csv_file} --jitter 0.2 0 0.1 0.05 --gray_p 0 "
                                        "--flip_p 0.25"))
    loader, _ = train.build_loader(args, train.distributed.Context(0, 1, 0, torch.device("cpu")))
    dataset = loader.dataset.dataset  # SeededSamples -> PretrainDataset
    assert dataset.jitter == (0.2, 0.0, 0.1, 0.05) and dataset.gray_p == 0.0 and dataset.flip_p == 0.25
    for bad, message in (("--gray_p 1.5", "argument --gray_p: must be at least 0 and at most 1, got 1.5"),
                         ("--flip_p -0.1", "argument --flip_p: must be at least 0 and at most 1, got -0.1"),
                         ("--jitter 0.5 0.5 0.5 0.6", "--jitter needs"), ("--jitter -1 0 0 0", "--jitter needs")):
        with pytest.raises(SystemExit):
            train.parse_args(shlex.split(f"--csv_file {csv_file} {bad}"))
        assert message in capsys.readouterr().err


def test_a_bad_monitor_csv_stops_before_any_output(csv_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"nope\.csv"):
        run(csv_file, out, f"--monitor_train_csv {tmp_path / 'nope.csv'} --monitor_test_csv {tmp_path / 'nope.csv'}")
    assert not (out / "tensorboard").exists() and not (out / "log.jsonl").exists()


def test_a_row_counting_more_frames_than_its_folder_holds_stops_before_any_output(csv_file, tmp_path):
    rows = read_csv(csv_file)
    rows[2] = rows[2]._replace(frames=rows[2].frames + 6)  # frames 25-30 do not exist
    write_csv(tmp_path / "stale.csv", rows)
    out = tmp_path / "run"
    err = run_error(str(tmp_path / "stale.csv"), out)
    assert err == (f"error: {tmp_path / 'stale.csv'}, line 3: the row says {rows[2].frames} frames, but the frame "
                   f"folder {rows[2].path} holds {rows[2].frames - 6}; the CSV is out of date: re-run "
                   "scripts/make_csv.py, which recounts every folder")
    assert os.listdir(out) == []  # no tensorboard/, no log.jsonl; the lock removed


class Recorder(train.Tracker):
    """A tracker that keeps what it would write to TensorBoard: ``{tag: {step: value}}``."""

    def __init__(self):
        super().__init__("unused", tensorboard=False)
        self.logged: dict[str, dict[int, float]] = {}

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        for name, value in values.items():
            self.logged.setdefault(prefix + name, {})[step] = float(value)


def test_logged_step_times_add_up_to_the_loop_wall_time_and_values_are_read_per_interval():
    """train_one_epoch over 6 batches that each take 0.1 s to arrive, read every 2 steps: the logged step
    times of the intervals add up to the loop's wall time measured around it (within 5 %), the logged
    data-wait fractions to the 0.6 s of waiting, TensorBoard holds each interval's means, and the batch
    health is computed at the steps that end an interval only."""
    import time

    torch.manual_seed(0)
    model = MFOModel("s3d", channel=16, cluster=4)
    clips = torch.randn(6, 2, 3, 3, 8, 32, 32)

    def slow_batches():
        for x in clips:
            time.sleep(0.1)
            yield x, torch.zeros(2, dtype=torch.long)

    args = train.parse_args(shlex.split("--csv_file unused.csv --arch s3d --seq 8 --img_dim 32 --train_batch 2 "
                                        "--cluster 4 --channel 16 --queue_size 16 --log_every 2 --save_every 0"))
    tracker, state, history = Recorder(), RunState(epoch=1), []
    bank = PrototypeBank(size=16, cluster=4, generator=torch.Generator().manual_seed(0))
    training = train.Training(model, torch.optim.Adam(model.parameters()), None, bank, state)  # no lr schedule
    tic = time.perf_counter()
    stopped = train.train_one_epoch(training, slow_batches(), steps=6, args=args,
                                    ctx=train.distributed.Context(0, 1, 0, torch.device("cpu")),
                                    objective=train.Objective(), tracker=tracker, amp=False, save=None,
                                    history=history)
    wall = time.perf_counter() - tic
    assert not stopped and (state.step_in_epoch, state.global_step, len(history)) == (6, 6, 6)
    step_s, wait = tracker.logged["speed/step_seconds"], tracker.logged["speed/data_wait_fraction"]
    assert sorted(step_s) == [2, 4, 6]
    logged = sum(2 * t for t in step_s.values())
    assert abs(logged - wall) <= 0.05 * wall and state.seconds == pytest.approx(logged)
    waited = sum(wait[step] * 2 * step_s[step] for step in step_s)
    assert 0.6 <= waited <= 0.6 + 0.05 * wall
    assert tracker.logged["speed/clips_per_s"][4] == pytest.approx(3 * 2 * 2 / (2 * step_s[4]))
    for step in (2, 4, 6):
        pair = history[step - 2:step]
        assert tracker.logged["train/loss"][step] == pytest.approx((pair[0]["loss"] + pair[1]["loss"]) / 2)
        assert tracker.logged["train/erank_pooled"][step] == pytest.approx(history[step - 1]["erank_pooled"])
    assert ["erank_pooled" in r for r in history] == [False, True] * 3
    assert state.counts["loss"] == 6 and state.counts["erank_pooled"] == 3
    assert state.means()["erank_pooled"] == pytest.approx(sum(r["erank_pooled"] for r in history[1::2]) / 3)


def test_compile_keeps_the_checkpoint_keys_and_a_failure_is_one_line(csv_file, tmp_path, monkeypatch):
    """--compile compiles the backbone in place, so checkpoints keep the plain keys (no ``_orig_mod.``);
    a backend that cannot build (here: one that reports a missing C++ compiler) ends in one line."""
    model = MFOModel("s3d", 16, 4)
    keys = list(model.state_dict())
    model.backbone.compile()
    assert list(model.state_dict()) == keys
    real = torch.nn.Module.compile

    def no_compiler(graph, inputs):
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real(self, backend=no_compiler))
    err = run_error(csv_file, tmp_path / "broken", "--compile --max_steps 1")
    assert err == ("error: --compile: torch.compile could not build the backbone here (RuntimeError: no working C++ "
                   "compiler found); run without --compile"), err


def test_collapse_warning_needs_a_low_rank_and_no_gain_of_the_probe():
    assert collapse_warning(30.0, 512, None, None) is None  # 5.9 % of the width: no collapse
    assert "effective rank 11.6 of 512 possible (below 5%);" in collapse_warning(11.6, 512, None, None)
    # the H200 run of docs/pretraining.md: rank 11.6 while the probe rose from 0.345 to 0.561: learning, not collapse
    assert collapse_warning(11.6, 512, 0.561, 0.345) is None
    assert ("rank 11.6 of 512 possible (below 5%), the probe's top-1 0.300 (at step 0: 0.345);"
            in collapse_warning(11.6, 512, 0.300, 0.345))


def test_sigterm_mid_epoch_saves_the_step_and_resume_ends_like_an_uninterrupted_run(csv_file, full_run, tmp_path,
                                                                                   monkeypatch, capsys):
    """SIGTERM during step 3 (epoch 1, step 1): the step finishes, last.pth holds it, one line, status 143;
    --resume auto then ends with the uninterrupted run's weights (max difference 0.0) and log.jsonl."""
    import signal

    real, calls = train.train_step, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the step
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", signalled)
    out = tmp_path / "stopped"
    with pytest.raises(SystemExit) as info:
        run(csv_file, out, "--keep_epochs 1")
    assert info.value.code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "interrupted at epoch 1, step 1 of the epoch; continue with --resume auto"
    state = load_checkpoint(out / "last.pth")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 3)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are the test process's again
    monkeypatch.undo()
    rest = run(csv_file, out, "--resume auto --keep_epochs 1")
    assert len(rest) == 1
    done, want = load_checkpoint(out / "last.pth"), load_checkpoint(full_run[0] / "last.pth")
    assert max((done["model"][k].float() - v.float()).abs().max().item() for k, v in want["model"].items()) == 0.0
    for got, line in zip(log_lines(out), log_lines(full_run[0]), strict=True):
        got.pop("train_seconds"), line.pop("train_seconds")
        assert got == line


def test_sigterm_during_the_last_checkpoint_ends_with_a_closing_line(csv_file, full_run, tmp_path, monkeypatch,
                                                                    capfd):
    """SIGTERM while the last epoch's checkpoint is being written: the run is complete, so it says so in a
    closing line and ends normally (nothing to resume: a --resume auto has nothing left to do); before, it
    ended on the notice 'stopping after the current step' alone."""
    import signal

    real, calls = train.Checkpointer.save, []

    def signalled(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the end of epoch 1, the last
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(train.Checkpointer, "save", signalled)
    out = tmp_path / "ending"
    assert len(run(csv_file, out)) == 4
    printed = capfd.readouterr()
    assert "SIGTERM received: stopping after the current step" in printed.err
    assert f"SIGTERM arrived as the run ended: it is complete, {out / 'last.pth'} holds its end (epoch 1)" in \
        printed.out
    state, want = load_checkpoint(out / "last.pth"), load_checkpoint(full_run[0] / "last.pth")
    assert (state["epoch"], state["step_in_epoch"]) == (2, 0)
    assert all(torch.equal(state["model"][k], v) for k, v in want["model"].items())
    monkeypatch.undo()
    assert run(csv_file, out, "--resume auto") == [] and "nothing left to do" in capfd.readouterr().out


def test_resume_refuses_changed_flags_and_says_when_a_run_is_finished_or_extended(csv_file, full_run, tmp_path,
                                                                                  capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(full_run[0], out)
    err = run_error(csv_file, out, "--resume auto --lr 0.01 --seq 10 --img_dim 64")
    assert re.fullmatch(r"error: --resume \S+last.pth was written with other flags: --img_dim 32 -> 64, --lr 0.001 "
                        r"-> 0.01, --seq 8 -> 10. A resume keeps the flags of the run \(only .*--epoch .* may "
                        r"change\); give the checkpoint's values, or start a new run in another --out_dir", err), err
    may_change = err.split("(only ")[1].split(" may change")[0].split()  # as the command line spells them
    assert {"--dist-url", "--world-size", "--multiprocessing-distributed", "--dist-timeout"} <= set(may_change)
    assert all(re.fullmatch(r"--[a-z]+([_-][a-z]+)*", flag) for flag in may_change) and "--dist_url" not in may_change
    capsys.readouterr()
    assert run(csv_file, out, "--resume auto --workers 1") == []  # --workers may change; nothing left to train
    assert "nothing left to do: " in capsys.readouterr().out
    rest = run(csv_file, out, "--resume auto --epoch 3")
    assert len(rest) == 2 and "extending the run of --epoch 2 to --epoch 3" in capsys.readouterr().out
    assert [x["epoch"] for x in log_lines(out)] == [0, 1, 2]
    err = run_error(csv_file, out, "--resume auto --epoch 2")
    assert "has trained 3 epochs and 0 steps, more than --epoch 2: a run cannot be shortened; give --epoch 3 " \
           "or more" in err


def test_resume_auto_after_a_run_that_saved_nothing_starts_afresh(csv_file, tmp_path, capsys):
    out = tmp_path / "crashed"
    (out / "tensorboard").mkdir(parents=True)
    (out / "log.jsonl").write_text('{"epoch": -1, "global_step": 0}\n')
    steps = run(csv_file, out, "--resume auto --max_steps 1")
    assert len(steps) == 1 and "log.jsonl" in capsys.readouterr().out  # the leftovers were named
    assert not (out / "log.jsonl").exists() and sorted(p.name for p in out.iterdir()) == ["args.json", "last.pth",
                                                                                             "tensorboard"]


@pytest.mark.parametrize("flags, reason", [
    ("--seq 1", "--seq 1: s3d needs at least 5 frames per clip"),
    ("--lr -0.01", "argument --lr: must be positive, got -0.01"),
    ("--wd -1", "argument --wd: must be at least 0, got -1"),
    ("--epoch 0", "argument --epoch: must be at least 1, got 0"),
    ("--keep_epochs -1", "argument --keep_epochs: must be at least 0, got -1"),
    ("--rate 0.5", "argument --rate: must be at least 1, got 0.5"),
    ("--train_batch 1", "--train_batch 1: the contrastive terms need a global batch of at least 2 videos"),
    ("--world-size 2 --rank 2", "--rank 2: the index of this machine is in [0, --world-size 2)"),
    ("--rank -1", "--rank -1: the index of this machine is in [0, --world-size 1)"),
    ("--dist-timeout 0", "argument --dist-timeout: must be positive, got 0")])
def test_values_that_cannot_train_are_refused_at_parse_time(flags, reason, capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(shlex.split(f"{TINY} --csv_file x.csv {flags}"))
    assert info.value.code == 2 and reason in capsys.readouterr().err


def test_an_out_dir_that_is_a_file_is_one_line(csv_file, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert run_error(csv_file, taken) == f"error: --out_dir {taken} is a file, not a folder; pick another --out_dir"


def test_a_resume_lays_adam_state_out_like_the_channels_last_parameters(csv_file, full_run):
    """A checkpoint written by a contiguous model (on the CPU), resumed by a channels-last one (as on CUDA):
    Adam's moments must take each parameter's memory layout (the fused step reads them elementwise) and
    keep their values."""
    args = train.parse_args(shlex.split(f"{TINY} --csv_file {csv_file}"))
    ctx = train.distributed.Context(0, 1, 0, torch.device("cpu"))
    training = train.build_training(args, ctx)
    training.core.channels_last()
    state = load_checkpoint(full_run[0] / "last.pth")
    training.load_state_dict(state)
    params = dict(training.core.named_parameters())
    weight = next(p for p in params.values() if p.dim() == 5)  # the first 3D convolution's
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    moments = training.optimizer.state[weight]
    assert moments["exp_avg"].stride() == weight.stride() and moments["exp_avg_sq"].stride() == weight.stride()
    index = list(params.values()).index(weight)
    saved = state["optimizer"]["state"][index]
    assert torch.equal(moments["exp_avg"], saved["exp_avg"]) and torch.equal(moments["exp_avg_sq"], saved["exp_avg_sq"])


def test_resume_refuses_a_csv_that_now_gives_other_videos(csv_file, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(Path(csv_file).parent, data)
    run(str(data / "pretrain.csv"), tmp_path / "run", "--max_steps 1")
    rows = (data / "pretrain.csv").read_text().splitlines(keepends=True)
    (data / "pretrain.csv").write_text("".join(rows[:-1]))  # a video dropped since the checkpoint
    err = run_error(str(data / "pretrain.csv"), tmp_path / "run", "--resume auto")
    assert re.fullmatch(r"error: --resume \S+last.pth was written for 8 usable videos in --csv_file \S+pretrain.csv, "
                        r"which now gives 7: the epochs would hold other samples. Restore the CSV, or start a new "
                        r"run in another --out_dir", err), err
