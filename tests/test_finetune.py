"""finetune.py end to end on the demo data: whole network trained, lr groups, validation, resume.

Exact resume itself is checked on a toy problem in test_protocol.py (same ``fit``)."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import finetune
from datasets import read_csv
from datasets.index import write_csv
from models import VideoClassifier
from datasets.demo import make_demo_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data with a smaller train CSV: 2 videos per class."""
    root = make_demo_data(tmp_path_factory.mktemp("demo") / "data", videos=16, frames=12, seed=1)
    rows = read_csv(root / "train.csv", require_labels=True)
    write_csv(root / "train_small.csv", [r for c in range(4) for r in [r for r in rows if r.label == c][:2]],
              relative_to=root)
    return root


def cli(root, out_dir, *extra):
    return ["--random_init", "--train_csv", str(root / "train_small.csv"), "--test_csv", str(root / "test.csv"),
            "--num_classes", "4", "--seq", "8", "--img_dim", "32", "--batch_size", "4", "--workers", "0",
            "--out_dir", str(out_dir), *extra]


def test_finetune_trains_everything_validates_and_resumes(demo, tmp_path):
    flags = ("--val_fraction", "0.25", "--lr", "1e-2")
    finetune.main(cli(demo, tmp_path, "--epochs", "1", *flags))
    after_one = torch.load(tmp_path / "last.pth", weights_only=True)
    groups = after_one["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])  # backbone at lr/10, head at lr
    assert [g["weight_decay"] for g in groups] == pytest.approx([1e-3, 1e-3])
    torch.manual_seed(0)  # the initial weights of the run (same seed, same construction order)
    initial = VideoClassifier("r3d18", 4, head="linear", dropout=0.9).state_dict()
    changed = [k for k, v in after_one["model"].items() if not torch.equal(v, initial[k])]
    assert any(k.startswith("backbone.stem") for k in changed) and any(k.startswith("head") for k in changed)

    results = finetune.main(cli(demo, tmp_path, "--epochs", "2", "--resume", "auto", *flags))
    saved = json.loads((tmp_path / "results.json").read_text())
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    val = [r["val_top1"] for r in log]
    assert saved["protocol"] == "fine-tuning" and saved["selected_by"] == "validation top1"
    assert saved["epoch"] == val.index(max(val)) + 1 and saved["val_top1"] == max(val)
    assert saved["checkpoint"] == "random_init (seed 0)" and saved["top1"] == results["top1"]
    assert saved["test_videos"] == 4 and (tmp_path / "confusion.png").is_file()
    best = torch.load(tmp_path / "best.pth", weights_only=True)
    assert best["epoch"] == saved["epoch"]


def test_dropout_out_of_range_is_refused(demo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        finetune.parse_args(cli(demo, tmp_path, "--dropout", "1.0"))
    assert "--dropout must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["two_columns", "garbage_ckpt"])
def test_bad_inputs_end_in_one_line_and_leave_out_dir_alone(demo, tmp_path, case):
    out = tmp_path / "out"
    args = cli(demo, out, "--epochs", "1")
    if case == "two_columns":
        (tmp_path / "two.csv").write_text("".join(f"{r.path},{r.frames}\n" for r in read_csv(demo / "test.csv")))
        args[args.index("--test_csv") + 1] = str(tmp_path / "two.csv")
        expected = "two.csv, line 1: 2 columns, expected 3 columns"
    else:
        (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 100)
        args[args.index("--random_init")] = "--pretrained"
        args.insert(1, str(tmp_path / "garbage.pth"))
        expected = "cannot read checkpoint"
    with pytest.raises(SystemExit) as stop:
        finetune.main(args)
    assert str(stop.value).startswith("error: ") and expected in str(stop.value)
    assert not out.exists()


def test_sigterm_stops_at_a_step_and_the_resume_ends_as_an_uninterrupted_run(demo, tmp_path):
    full = finetune.main(cli(demo, tmp_path / "full", "--epochs", "2"))
    out = tmp_path / "split"
    proc = subprocess.Popen([sys.executable, "finetune.py", *cli(demo, out, "--epochs", "2")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout.readline().startswith("fine-tuning of random_init")  # started: its handlers are in place
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.startswith(("interrupted", "SIGTERM", "error", "Traceback"))]
    assert len(lines) == 2 and lines[0].startswith("SIGTERM received: stopping after the current step"), err
    assert re.fullmatch(rf"interrupted at epoch 1, step 1 of the epoch \(saved in {re.escape(str(out))}/last.pth\); "
                        r"continue with --resume auto", lines[1]), lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "last.pth", "tensorboard"]  # no lock, no temporary

    resumed = finetune.main(cli(demo, out, "--epochs", "2", "--resume", "auto"))
    assert resumed["top1"] == full["top1"] and resumed["per_class_accuracy"] == full["per_class_accuracy"]
    weights = [torch.load(d / "last.pth", weights_only=True)["model"] for d in (tmp_path / "full", out)]
    assert max((weights[0][k].float() - weights[1][k].float()).abs().max().item() for k in weights[0]) == 0.0
    assert (out / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--lr", "-0.01"], "--lr must be positive, got -0.01"),
    (["--backbone_lr_scale", "-1"], "--backbone_lr_scale must be >= 0"),
    (["--arch", "s3d", "--seq", "4"], "--seq 4: s3d needs at least 5 frames per clip"),
])
def test_values_that_cannot_work_are_refused_at_parse_time(demo, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        finetune.parse_args(cli(demo, tmp_path, *extra))
    assert info.value.code == 2 and message in capsys.readouterr().err
