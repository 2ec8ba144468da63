"""eval_linear.py end to end on the demo data: probe, cached features, retrieval, errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_linear
from datasets import read_csv
from engine.checkpoint import save_checkpoint
from models import MFOModel
from datasets.demo import make_demo_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo frame folders and CSVs, and a fake train.py checkpoint of an MFO model."""
    root = make_demo_data(tmp_path_factory.mktemp("demo") / "data", videos=16, frames=12, seed=0)
    torch.manual_seed(0)
    ckpt = save_checkpoint({"model": MFOModel("r3d18", channel=8, cluster=5).state_dict(), "epoch": 1},
                           root / "mfo.pth")
    classes = (root / "classes.txt").read_text().split()
    return {"root": root, "ckpt": ckpt, "classes": classes}


def cli(demo, out_dir, *extra):
    root = demo["root"]
    return ["--pretrained", str(demo["ckpt"]), "--train_csv", str(root / "train.csv"), "--test_csv",
            str(root / "test.csv"), "--class_names", str(root / "classes.txt"), "--num_classes",
            str(len(demo["classes"])), "--seq", "8", "--img_dim", "32", "--batch_size", "4", "--workers", "0",
            "--out_dir", str(out_dir), *extra]


def test_linear_probe_end_to_end(demo, tmp_path):
    results = eval_linear.main(cli(demo, tmp_path, "--epochs", "2", "--schedule", "1"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    test_rows = read_csv(demo["root"] / "test.csv", require_labels=True)
    assert saved["test_videos"] == len(test_rows)
    assert set(saved["per_class_accuracy"]) == set(demo["classes"])
    # top-1 is the per-class accuracies weighted by each class's number of test videos
    per_class_count = {name: sum(r.label == c for r in test_rows) for c, name in enumerate(demo["classes"])}
    weighted = sum(per_class_count[n] * (a or 0.0) for n, a in saved["per_class_accuracy"].items())
    assert saved["top1"] == pytest.approx(weighted / len(test_rows))
    assert 0 <= saved["top1"] <= saved["top5"] <= 1
    assert saved["checkpoint"] == str(demo["ckpt"]) and saved["args"]["pretrained"] == str(demo["ckpt"])
    assert saved["protocol"] == "linear probe" and saved["epoch"] == 2 and saved["selected_by"] == "last epoch"
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert any((tmp_path / "tensorboard").iterdir())
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2

    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert sorted(last["model"]) == ["head.1.bias", "head.1.num_batches_tracked", "head.1.running_mean",
                                     "head.1.running_var", "head.1.weight", "head.2.bias", "head.2.weight"]
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)  # x0.1 after epoch 1
    assert last["optimizer"]["param_groups"][0]["momentum"] == 0.9


FEATURE_FLAGS = ("--features", "--epochs", "10", "--schedule", "--batch_size", "8")


@pytest.fixture(scope="module")
def features_run(demo, tmp_path_factory):
    """One --features probe; its cache serves the tests below."""
    out_dir = tmp_path_factory.mktemp("features")
    return out_dir, eval_linear.main(cli(demo, out_dir, *FEATURE_FLAGS))


def copy_cache(src, dst):
    (cache,) = src.glob("features_*.pt")
    shutil.copy2(cache, dst / cache.name)
    return dst / cache.name


def test_features_probe_learns(features_run):
    out_dir, results = features_run
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    assert len(log) == 10
    assert log[-1]["train_loss"] < 0.5 * log[0]["train_loss"]
    assert log[-1]["train_acc"] > 0.8  # 4 classes: chance is 0.25
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["top1"] == results["top1"] and saved["args"]["features"] is True
    assert sorted(torch.load(out_dir / "last.pth", weights_only=True)["model"]) == [
        "1.bias", "1.num_batches_tracked", "1.running_mean", "1.running_var", "1.weight", "2.bias", "2.weight"]


def test_features_cache_is_reused(demo, features_run, tmp_path, capsys):
    cache = copy_cache(features_run[0], tmp_path)
    stamp = cache.stat().st_mtime_ns
    capsys.readouterr()
    again = eval_linear.main(cli(demo, tmp_path, *FEATURE_FLAGS))
    assert "features read from the cache" in capsys.readouterr().out
    assert list(tmp_path.glob("features_*.pt")) == [cache] and cache.stat().st_mtime_ns == stamp
    first = features_run[1]
    assert again["top1"] == first["top1"] and again["per_class_accuracy"] == first["per_class_accuracy"]


def test_retrieval_end_to_end(demo, features_run, tmp_path):
    copy_cache(features_run[0], tmp_path)  # same checkpoint, data and clips: the cache is valid here too
    recalls = eval_linear.main(cli(demo, tmp_path, "--retrieval"))
    saved = json.loads((tmp_path / "results.json").read_text())
    keys = [f"recall@{k}" for k in (1, 5, 10, 20, 50)]
    assert [saved[k] for k in keys] == [recalls[k] for k in keys]
    assert all(0 <= saved[a] <= saved[b] <= 1 for a, b in zip(keys, keys[1:]))
    train_labels = {r.label for r in read_csv(demo["root"] / "train.csv", require_labels=True)}
    test_labels = {r.label for r in read_csv(demo["root"] / "test.csv", require_labels=True)}
    assert saved["train_videos"] <= 50 and test_labels <= train_labels
    assert saved["recall@50"] == 1.0  # the whole gallery holds every test class
    assert saved["gallery"] == "video" and saved["checkpoint"] == str(demo["ckpt"])

    with pytest.raises(SystemExit,
                       match=r"^error: --out_dir \S+ already holds a run \(args.json, results.json, tensorboard\)"):
        eval_linear.main(cli(demo, tmp_path, "--retrieval", "--gallery", "one_clip"))  # one run per folder
    one_clip = eval_linear.main(cli(demo, tmp_path, "--retrieval", "--gallery", "one_clip", "--overwrite"))
    assert json.loads((tmp_path / "results.json").read_text())["gallery"] == "one_clip"
    assert one_clip["recall@50"] == 1.0
    assert len(list(tmp_path.glob("features_*.pt"))) == 1  # the same features serve both galleries


def test_checkpoint_with_missing_backbone_keys_is_an_error(demo, tmp_path):
    state = torch.load(demo["ckpt"], weights_only=True)
    del state["model"]["backbone.layer4.1.conv2.1.running_var"]
    bad = save_checkpoint(state, tmp_path / "partial.pth")
    args = cli(demo, tmp_path / "out", "--epochs", "1")
    args[1] = str(bad)
    with pytest.raises(SystemExit, match=r"^error: .*1 missing key\(s\) \[layer4.1.conv2.1.running_var\]"):
        eval_linear.main(args)
    assert not (tmp_path / "out").exists()


def test_labels_beyond_num_classes_are_a_readable_error(demo, tmp_path):
    args = cli(demo, tmp_path / "out", "--epochs", "1")
    args[args.index("--num_classes") + 1] = "1"
    args[args.index("--class_names"):args.index("--class_names") + 2] = []
    with pytest.raises(SystemExit, match=r"^error: .*train.csv, line \d+: label \d+ out of range"):
        eval_linear.main(args)
    assert not (tmp_path / "out").exists()


def replace_flag(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = str(value)
    return args


@pytest.mark.parametrize("case", ["two_columns", "empty_test", "missing_ckpt", "garbage_ckpt", "wrong_dataset",
                                  "out_dir_is_a_file"])
def test_bad_inputs_end_in_one_line_and_leave_out_dir_alone(demo, tmp_path, case):
    out = tmp_path / "out"
    args = cli(demo, out, "--epochs", "1")
    if case == "two_columns":
        (tmp_path / "two.csv").write_text("".join(f"{r.path},{r.frames}\n" for r in
                                                  read_csv(demo["root"] / "train.csv")))
        args, expected = replace_flag(args, "--train_csv", tmp_path / "two.csv"), "two.csv, line 1: 2 columns"
    elif case == "empty_test":
        (tmp_path / "empty.csv").write_text("")
        args, expected = replace_flag(args, "--test_csv", tmp_path / "empty.csv"), "empty.csv: no rows"
    elif case == "missing_ckpt":
        args, expected = replace_flag(args, "--pretrained", tmp_path / "nope.pth"), "checkpoint not found"
    elif case == "garbage_ckpt":
        (tmp_path / "garbage.pth").write_bytes(bytes(range(256)) * 64)
        args, expected = replace_flag(args, "--pretrained", tmp_path / "garbage.pth"), "cannot read checkpoint"
    elif case == "wrong_dataset":
        args, expected = replace_flag(args, "--num_classes", 0) + ["--dataset", "hmdb51"], "--dataset hmdb51 means 51"
        args[args.index("--class_names"):args.index("--class_names") + 2] = []
    else:
        (tmp_path / "a_file").write_text("not a folder")
        args, expected = replace_flag(args, "--out_dir", tmp_path / "a_file"), "a_file is a file, not a folder"
    with pytest.raises(SystemExit) as stop:
        eval_linear.main(args)
    assert str(stop.value).startswith("error: ") and expected in str(stop.value)
    assert not out.exists()


def test_command_line_error_is_one_line_without_traceback(demo, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    args = replace_flag(cli(demo, tmp_path / "out", "--epochs", "1"), "--test_csv", tmp_path / "empty.csv")
    done = subprocess.run([sys.executable, "eval_linear.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'empty.csv'}: no rows; build it with "
                                                "scripts/make_csv.py"]
    assert not (tmp_path / "out").exists()


def test_classes_come_from_the_labels(demo, tmp_path):
    """Without --num_classes or --dataset the head has max label + 1 = 4 outputs (not UCF-101's 101)."""
    args = cli(demo, tmp_path, "--features", "--epochs", "1", "--schedule")
    args[args.index("--num_classes"):args.index("--num_classes") + 2] = []
    eval_linear.main(args)
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["model"]["2.weight"].shape == (len(demo["classes"]), 512)


@pytest.mark.parametrize("extra, message", [
    (["--val_fraction", "1.5"], "--val_fraction must be in"),
    (["--features", "--retrieval"], "drop --features"),
    (["--schedule", "80", "60"], "increasing"),
    (["--retrieval", "--resume", "auto"], "nothing to resume"),
    (["--momentum", "-0.5"], "--momentum must be >= 0"),
])
def test_bad_arguments_stop_with_a_message(demo, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        eval_linear.parse_args(cli(demo, tmp_path, *extra))
    assert message in capsys.readouterr().err
