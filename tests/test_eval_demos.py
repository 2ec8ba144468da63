"""evaluation.demo and the ``--demo`` of eval_linear.py, finetune.py and visualization/temporal_cam.py.

The demos run for real in a temporary folder holding a small ``data/demo`` and a ``runs/demo/last.pth`` of the
pretraining demo's backbone (r3d18): the demos' own configuration on 8 videos instead of 48, with fewer epochs
(explicit flags win; the demos' own values are checked at parse time)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval_linear
import finetune
import train
from datasets import read_csv
from datasets.demo import make_demo_data
from engine.checkpoint import save_checkpoint
from evaluation import demo
from evaluation.demo import DEMO_CHECKPOINT, DEMO_DATA, DEMOS, NEXT
from models import MFOModel
from tests.cli import error_line
from visualization import temporal_cam

ROOT = Path(__file__).resolve().parents[1]
MISSING = (f"error: --demo evaluates the demo's pretraining run, {DEMO_CHECKPOINT}, and there is none in this "
           "folder: run python train.py --demo first (a minute or two on a CPU)")
COMMANDS = {"linear": (eval_linear.main, ["--demo"]), "retrieval": (eval_linear.main, ["--demo", "--retrieval"]),
            "finetune": (finetune.main, ["--demo"]), "cam": (temporal_cam.main, ["--demo"])}
EPOCH = r"epoch (\d+)/(\d+): loss \d+\.\d{4}, acc [01]\.\d{3}(, val top-1 [01]\.\d{3})? \(\d+\.\d s\)"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder as ``python train.py --demo`` leaves it: data/demo (8 videos of 8 frames, one clip each: 4 train,
    4 test) and runs/demo/last.pth, an MFO model's weights."""
    root = tmp_path_factory.mktemp("demo_folder")
    make_demo_data(root / DEMO_DATA, videos=8, frames=8, seed=0)
    torch.manual_seed(0)
    save_checkpoint({"model": MFOModel("r3d18", channel=8, cluster=4).state_dict(), "epoch": 1},
                    root / DEMO_CHECKPOINT)
    return root


def videos(root: Path, split: str) -> int:
    return len(read_csv(root / DEMO_DATA / f"{split}.csv"))


def lines_of(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def flags_of(parse, argv) -> dict:
    """The flags ``parse(argv)`` gives, as JSON would hold them."""
    return json.loads(json.dumps(vars(parse(argv))))


def test_the_demos_evaluate_what_the_pretraining_demo_writes():
    pretrain = vars(train.parse_args(["--demo"]))
    assert pretrain["out_dir"] == str(DEMO_CHECKPOINT.parent) and pretrain["csv_file"] == str(DEMO_DATA / "pretrain.csv")
    assert (pretrain["monitor_train_csv"], pretrain["monitor_test_csv"]) == (str(DEMO_DATA / "train.csv"),
                                                                             str(DEMO_DATA / "test.csv"))
    for name in sorted(COMMANDS):
        values = DEMOS[name]
        assert values["seq"] == pretrain["seq"], name
        assert values["train_csv"] == str(DEMO_DATA / "train.csv") and values["pretrained"] == str(DEMO_CHECKPOINT)
    assert {DEMOS[name]["img_dim"] for name in ("linear", "retrieval", "finetune")} == {pretrain["img_dim"]}
    arch = train.get_args_parser().get_default("arch")
    assert eval_linear.parse_args(["--demo"]).arch == finetune.parse_args(["--demo"]).arch == arch
    assert temporal_cam.parse_args(["--demo"]).arch == arch


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_demo_values_replace_the_defaults_and_explicit_flags_win(name):
    parse = {"linear": eval_linear.parse_args, "retrieval": eval_linear.parse_args, "finetune": finetune.parse_args,
             "cam": temporal_cam.parse_args}[name]
    argv = COMMANDS[name][1]
    args = vars(parse(argv))
    assert {k: args[k] for k in DEMOS[name]} == DEMOS[name] and args["overwrite"] is True
    mine = vars(parse([*argv, "--epochs", "3", "--out_dir", "elsewhere"]))
    assert (mine["epochs"], mine["out_dir"], mine["overwrite"]) == (3, "elsewhere", False)  # not another folder
    if name in ("linear", "finetune"):  # the tool's default folder, where real runs live, named: nothing is deleted
        real = parse(["--train_csv", "a.csv", "--test_csv", "b.csv", "--random_init"]).out_dir
        assert real != DEMOS[name]["out_dir"] and parse([*argv, "--out_dir", real]).overwrite is False
    assert mine["seq"] == DEMOS[name]["seq"] and mine["pretrained"] == str(DEMO_CHECKPOINT)
    baseline = vars(parse([*argv, "--random_init"]))
    assert not baseline["pretrained"] and baseline["out_dir"] == DEMOS[name]["out_dir"] + "_random_init"
    if name in ("linear", "finetune"):
        assert vars(parse([*argv, "--resume", "auto"]))["overwrite"] is False  # continues, deletes nothing


def test_the_pretraining_demo_starts_again_in_its_own_folder_only():
    """A second ``train.py --demo`` starts again (as the evaluation demos do) instead of asking for --resume auto or
    --overwrite; with --resume, or in a folder of the user's, it deletes nothing."""
    args = vars(train.parse_args(["--demo"]))
    assert {k: args[k] for k in DEMOS["pretrain"]} == DEMOS["pretrain"] and args["overwrite"] is True
    assert vars(train.parse_args(["--demo", "--resume", "auto"]))["overwrite"] is False
    mine = vars(train.parse_args(["--demo", "--out_dir", "runs/mine", "--epoch", "9"]))
    assert (mine["overwrite"], mine["epoch"], mine["seq"]) == (False, 9, DEMOS["pretrain"]["seq"])
    # the folder of real runs (train.py's default --out_dir) named explicitly: the demo deletes nothing there
    assert train.parse_args(["--demo", "--out_dir", train.get_args_parser().get_default("out_dir")]).overwrite is False
    assert train.parse_args(["--demo", "--out_dir", "runs/demo"]).overwrite is True  # the demo's own, named


@pytest.mark.parametrize("parse, message", [
    (eval_linear.parse_args, "the following arguments are required: --train_csv, --test_csv (or --demo)"),
    (finetune.parse_args, "the following arguments are required: --train_csv, --test_csv (or --demo)"),
    (temporal_cam.parse_args, "the following arguments are required: --train_csv, --test_csv, --out_dir (or --demo)"),
])
def test_without_demo_the_inputs_are_still_required(parse, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--random_init"])
    assert info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--train_csv", "a.csv", "--test_csv", "b.csv", "--out_dir", "x"])
    err = capsys.readouterr().err
    assert "--pretrained" in err and "--random_init" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_without_the_pretraining_demo_one_line_and_nothing_written(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, argv = COMMANDS[name]
    assert error_line(lambda: main(argv)) == MISSING
    assert list(tmp_path.iterdir()) == []


def test_the_missing_demo_line_on_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "visualization" / "temporal_cam.py"), "--demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.splitlines() == [MISSING] and done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_random_init_demo_needs_no_pretraining_and_builds_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr(demo, "make_demo_data", lambda out: built.append(out) or make_demo_data(out, 8, 8))
    recalls = eval_linear.main(["--demo", "--retrieval", "--random_init"])
    assert built == [DEMO_DATA] and not (tmp_path / "runs" / "demo").exists()
    saved = json.loads((tmp_path / "runs" / "demo_retrieval_random_init" / "results.json").read_text())
    assert saved["checkpoint"] == "random_init (seed 0)" and saved["recall@1"] == recalls["recall@1"]
    assert saved["test_videos"] == videos(tmp_path, "test") and lines_of(capsys)[-1] == f"next: {NEXT['retrieval']}"


def check_headline(line: str, what: str, root: Path, name: str, schedule: str = "") -> None:
    values = DEMOS[name]
    assert line == (f"{what} of {DEMO_CHECKPOINT} on {videos(root, 'train')} train / {videos(root, 'test')} test "
                    f"videos (4 classes){schedule} -> {values['out_dir']} (every argument: {values['out_dir']}/args.json)")


def check_epochs(lines: list[str], epochs: int) -> None:
    numbers = [re.fullmatch(EPOCH, line) for line in lines if line.startswith("epoch ")]
    assert all(numbers) and [(int(m[1]), int(m[2])) for m in numbers] == [(e, epochs) for e in range(1, epochs + 1)]


def test_linear_probe_demo(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    out = folder / DEMOS["linear"]["out_dir"]
    epochs, tested = 2, videos(folder, "test")
    results = eval_linear.main(["--demo", "--epochs", str(epochs), "--schedule", "1"])
    lines = lines_of(capsys)
    check_headline(lines[0], "linear probe", folder, "linear",
                   f": {epochs} epochs, batch {DEMOS['linear']['batch_size']}, lr {DEMOS['linear']['lr']:g}")
    assert lines[1].startswith(f"loaded 120 backbone tensors from {DEMO_CHECKPOINT}")
    check_epochs(lines, epochs)
    assert len(lines) == 2 + epochs + 2  # no argument dump: headline, checkpoint, epochs, result, next
    assert lines[-2].startswith(f"video-level test accuracy over {tested} videos: top-1 ")
    assert lines[-1] == f"next: {NEXT['linear']}"
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_videos"] == tested and 0 <= saved["top1"] <= 1 and saved["top1"] == results["top1"]
    assert saved["top1"] * tested == pytest.approx(round(saved["top1"] * tested))  # a count of test videos
    assert json.loads((out / "args.json").read_text())["args"] == saved["args"] == flags_of(
        eval_linear.parse_args, ["--demo", "--epochs", str(epochs), "--schedule", "1"])
    assert len((out / "log.jsonl").read_text().splitlines()) == epochs

    eval_linear.main(["--demo", "--epochs", "1", "--schedule"])  # again: the demo starts again in its folder
    lines = lines_of(capsys)
    assert lines[1] == f"--overwrite: removed args.json, confusion.png, last.pth, log.jsonl, results.json, " \
                       f"tensorboard from {DEMOS['linear']['out_dir']}"
    check_epochs(lines, 1)
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "args.json").read_text())["args"]["epochs"] == 1


def test_retrieval_demo(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    out = folder / DEMOS["retrieval"]["out_dir"]
    recalls = eval_linear.main(["--demo", "--retrieval"])
    lines = lines_of(capsys)
    check_headline(lines[0], "nearest-neighbour retrieval by the features", folder, "retrieval")
    tested, gallery = videos(folder, "test"), videos(folder, "train")
    assert lines[-4] == (f"retrieval of {tested} test videos among {gallery} train videos (recall, %) -> "
                         f"{DEMOS['retrieval']['out_dir']}/results.json:")
    assert lines[-1] == f"next: {NEXT['retrieval']}" and not any(line.startswith("epoch") for line in lines)
    saved = json.loads((out / "results.json").read_text())
    keys = [f"recall@{k}" for k in (1, 5, 10, 20, 50)]
    assert [saved[k] for k in keys] == [recalls[k] for k in keys]
    assert all(0 <= saved[a] <= saved[b] <= 1 for a, b in zip(keys, keys[1:]))
    assert all(saved[k] * tested == pytest.approx(round(saved[k] * tested)) for k in keys)
    assert saved["recall@50"] == 1.0  # the whole gallery holds every class
    assert json.loads((out / "args.json").read_text())["args"] == flags_of(eval_linear.parse_args, ["--demo", "--retrieval"])

    again = eval_linear.main(["--demo", "--retrieval"])  # a rerun just works, from the cached features
    assert again == recalls and any(line.startswith("features read from the cache") for line in lines_of(capsys))


def test_finetune_demo(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    out = folder / DEMOS["finetune"]["out_dir"]
    epochs, tested = 1, videos(folder, "test")
    results = finetune.main(["--demo", "--epochs", str(epochs), "--schedule"])
    lines = lines_of(capsys)
    lr = finetune.parse_args(["--demo"]).lr
    check_headline(lines[0], "fine-tuning", folder, "finetune",
                   f": 1 epoch, batch {DEMOS['finetune']['batch_size']}, lr {lr:g}")
    check_epochs(lines, epochs)
    assert len(lines) == 2 + epochs + 2 and lines[-1] == f"next: {NEXT['finetune']}"
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"] == "fine-tuning" and saved["test_videos"] == tested == len(results["per_class_accuracy"])
    assert 0 <= saved["top1"] <= saved["top5"] <= 1
    assert saved["top1"] * tested == pytest.approx(round(saved["top1"] * tested))
    assert json.loads((out / "args.json").read_text())["args"] == flags_of(
        finetune.parse_args, ["--demo", "--epochs", str(epochs), "--schedule"])
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == list(
        range(1, epochs + 1))


def test_temporal_cam_demo(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    values = DEMOS["cam"]
    out = folder / values["out_dir"]
    epochs = 1
    result = temporal_cam.main(["--demo", "--epochs", str(epochs)])
    lines = lines_of(capsys)
    drawn = min(values["num_videos"], videos(folder, "test"))
    assert lines[0] == (f"temporal CAM of {DEMO_CHECKPOINT}: order head on {videos(folder, 'train')} train videos, "
                        f"1 epoch, batch {values['batch_size']}, "
                        f"lr {temporal_cam.parse_args(['--demo']).lr:g}; order accuracy on "
                        f"{videos(folder, 'test')} test videos, pictures of {drawn} -> {values['out_dir']} "
                        f"(every argument: {values['out_dir']}/args.json)")
    check_epochs(lines, epochs)
    assert lines[-1] == f"next: {NEXT['cam']}"
    assert 0 <= result["order_accuracy"] <= 1
    assert json.loads((out / "args.json").read_text())["args"] == flags_of(temporal_cam.parse_args,
                                                                    ["--demo", "--epochs", str(epochs)])
    folders = sorted((out / "videos").iterdir())
    assert len(folders) == drawn
    size, seq = values["img_dim"], values["seq"]
    for video in folders:
        for direction in ("forward", "reversed"):
            names = sorted(p.name for p in (video / direction).iterdir())
            assert names == [f"frame_{t:05d}.png" for t in range(1, seq + 1)] + ["grid.png"]
            assert Image.open(video / direction / "frame_00001.png").size == (size, size)
            assert np.asarray(Image.open(video / direction / "grid.png")).shape == (2 * size, seq * size, 3)

    temporal_cam.main(["--demo", "--epochs", "1", "--num_videos", "0"])  # again: its earlier outputs go first
    assert lines_of(capsys)[1] == (f"--overwrite: removed args.json, log.jsonl, order_accuracy.json, order_head.pth, "
                                   f"tensorboard, videos from {values['out_dir']}")
    assert not (out / "videos").exists() and len((out / "log.jsonl").read_text().splitlines()) == 1
