"""visualization/temporal_cam.py: the contract command line end to end on generated frames, and its errors."""
import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import ClipDataset, read_csv
from datasets.index import write_csv
from engine.checkpoint import CheckpointError, save_checkpoint
from engine.checkpoint import load_backbone
from models import MFOModel, build_backbone
from datasets.demo import make_demo_data
from visualization.cam import OrderClassifier, constant_cam_warning, high_map_size, order_head, pooled_logits, to_rgb
from tests.cli import error_line
from visualization.temporal_cam import cam, draw_videos, main, parse_args

ROOT = Path(__file__).resolve().parents[1]
SEQ, IMG = 8, 48  # 48 px: a 2x2 high map, so the CAM varies over the frame


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Demo frame folders with train/test CSVs, and a fake train.py checkpoint of an MFO model."""
    root = tmp_path_factory.mktemp("cam_data")
    demo = make_demo_data(root / "demo", videos=16, frames=12, seed=0)  # 12 train, 4 test videos
    # fewer videos for fast runs: 4 to train (one per class), 2 to test (2 windows each)
    write_csv(demo / "train_small.csv", read_csv(demo / "train.csv")[::3])
    write_csv(demo / "test_small.csv", read_csv(demo / "test.csv")[:2])
    torch.manual_seed(0)
    ckpt = save_checkpoint({"model": MFOModel("r3d18", channel=16, cluster=8).state_dict()}, root / "mfo.pth")
    return demo, ckpt


def cli(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--train_csv", str(data_dir / "train_small.csv"), "--test_csv", str(data_dir / "test_small.csv"),
            "--out_dir", str(out_dir), "--seq", str(SEQ), "--img_dim", str(IMG), "--batch_size", "4",
            "--workers", "0", *extra]


def implied_heat(frames: np.ndarray, overlays: np.ndarray) -> np.ndarray:
    """Invert the 50/50 blend: the JET colour 2*overlay - frame, mapped to the heat of the nearest JET entry."""
    lut = matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255  # [256,3]
    colour = 2 * overlays.astype(np.float64) - frames  # [...,3]
    dist = ((colour[..., None, :] - lut) ** 2).sum(-1)  # [...,256]
    return dist.argmin(-1) / 255


def png(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def test_command_line_end_to_end(data, tmp_path):
    data_dir, ckpt = data
    out = tmp_path / "cam"
    args = cli(data_dir, out, "--pretrained", str(ckpt), "--epochs", "2", "--num_videos", "2")
    run = subprocess.run([sys.executable, "visualization/temporal_cam.py", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "temporal-order accuracy" in run.stdout and "loaded" in run.stdout

    # lr x0.1 after 60% of 2 epochs: epoch 0 at 1e-3, epoch 1 at 1e-4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[0]["lr"] == pytest.approx(1e-3) and log[1]["lr"] == pytest.approx(1e-4)

    # the saved head, applied to the pretrained backbone clip by clip, gives the reported accuracy
    state = torch.load(out / "order_head.pth", weights_only=True)
    assert state["arch"] == "r3d18" and state["head"]["weight"].shape == (2, 512)
    head = order_head(512)
    head.load_state_dict(state["head"])
    backbone = build_backbone("r3d18")
    load_backbone(backbone, ckpt)
    backbone.eval()
    test_set = ClipDataset(data_dir / "test_small.csv", mode="test", seq=SEQ, img_dim=IMG)
    right, clips = 0, 0
    with torch.no_grad():
        for k in range(len(test_set)):
            windows = test_set[k][0]  # [N,3,T,H,W]
            for label, x in ((0, windows), (1, windows.flip(2))):
                pred = pooled_logits(head, backbone(x)[2]).argmax(1)  # [N]
                right += int((pred == label).sum())
            clips += windows.shape[0]
    report = json.loads((out / "order_accuracy.json").read_text())
    assert report["clips"] == clips and report["videos"] == len(test_set)
    assert report["order_accuracy"] == pytest.approx(right / (2 * clips))
    assert report["pretrained"] == str(ckpt) and report["random_init"] is False

    # two videos, each with a forward and a reversed clip: 8 overlays and one grid per clip
    videos = sorted((out / "videos").iterdir())
    assert len(videos) == 2
    first = test_set[0][0][0]  # the first window of the first test video [3,T,H,W]
    for v, folder in enumerate(videos):
        grids = {}
        for direction in ("forward", "reversed"):
            names = sorted(p.name for p in (folder / direction).iterdir())
            assert names == [f"frame_{t:05d}.png" for t in range(1, SEQ + 1)] + ["grid.png"]
            g = png(folder / direction / "grid.png")
            assert g.shape == (2 * IMG, SEQ * IMG, 3) and g.dtype == np.uint8
            for t in range(SEQ):
                frame = png(folder / direction / f"frame_{t + 1:05d}.png")
                assert frame.shape == (IMG, IMG, 3)
                np.testing.assert_array_equal(g[IMG:, t * IMG:(t + 1) * IMG], frame)
                assert not np.array_equal(frame, g[:IMG, t * IMG:(t + 1) * IMG])  # a heat map is drawn
            grids[direction] = g
            heat = implied_heat(g[:IMG], g[IMG:])  # [H,T*W]
            assert heat.min() < 0.02 and heat.max() > 0.98  # min-max normalised over the clip
        for t in range(SEQ):  # the reversed clip shows the same frames in the opposite order
            np.testing.assert_array_equal(grids["reversed"][:IMG, t * IMG:(t + 1) * IMG],
                                          grids["forward"][:IMG, (SEQ - 1 - t) * IMG:(SEQ - t) * IMG])
        if v == 0:
            np.testing.assert_array_equal(grids["forward"][:IMG], np.concatenate(list(to_rgb(first)), axis=1))


def test_random_init_baseline_in_process(data, tmp_path):
    data_dir, _ = data
    result = main(cli(data_dir, tmp_path / "base", "--random_init", "--epochs", "1", "--num_videos", "1"))
    saved = json.loads((tmp_path / "base" / "order_accuracy.json").read_text())
    assert saved["random_init"] is True and saved["pretrained"] is None
    assert saved["order_accuracy"] == pytest.approx(result["order_accuracy"])
    assert 0.0 <= saved["order_accuracy"] <= 1.0
    assert saved["order_accuracy"] == pytest.approx((saved["forward_accuracy"] + saved["reversed_accuracy"]) / 2)
    assert len(list((tmp_path / "base" / "videos").iterdir())) == 1


@pytest.mark.parametrize("extra, message", [
    ([], "exactly one of --pretrained"),
    (["--random_init", "--pretrained", "x.pth"], "exactly one of --pretrained"),
    (["--random_init", "--lr_decay", "0"], "--decay_at (--lr_decay) is a fraction of the epochs in (0, 1], got 0"),
    (["--random_init", "--decay_at", "1.5"], "--decay_at (--lr_decay) is a fraction of the epochs in (0, 1], got 1.5"),
    (["--random_init", "--epochs", "0"], "--epochs must be at least 1"),
    (["--random_init", "--num_videos", "-1"], "must not be negative"),
    (["--random_init", "--lr", "-0.01"], "--lr must be positive, got -0.01"),
    (["--random_init", "--wd=-1e-3"], "--wd must be >= 0"),
    (["--random_init", "--arch", "s3d", "--seq", "4"], "--seq 4: s3d needs at least 5 frames per clip"),
])
def test_bad_arguments_are_refused(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        parse_args(["--train_csv", "a.csv", "--test_csv", "b.csv", "--out_dir", str(tmp_path), *extra])
    assert message in capsys.readouterr().err


def test_paper_defaults(tmp_path):
    args = parse_args(["--random_init", "--train_csv", "a.csv", "--test_csv", "b.csv", "--out_dir", str(tmp_path)])
    assert (args.arch, args.seq, args.img_dim, args.epochs, args.num_videos) == ("r3d18", 16, 224, 50, 8)
    assert (args.lr, args.wd, args.lr_decay) == (1e-3, 1e-3, 0.6)


@pytest.mark.parametrize("primary, alias, dest, value", [
    ("--epoch", "--epochs", "epochs", 7), ("--train_batch", "--batch_size", "batch_size", 3),
    ("--decay_at", "--lr_decay", "lr_decay", 0.25)])
def test_the_old_spellings_are_the_same_flags(tmp_path, primary, alias, dest, value):
    """train.py's spellings (``--epoch``, ``--train_batch``) and ``--decay_at``, a fraction of the epochs unlike
    train.py's ``--lr_decay`` (an epoch); the old ``--epochs``, ``--batch_size`` and ``--lr_decay`` still parse."""
    base = ["--random_init", "--train_csv", "a.csv", "--test_csv", "b.csv", "--out_dir", str(tmp_path)]
    new, old = parse_args([*base, primary, str(value)]), parse_args([*base, alias, str(value)])
    assert vars(new) == vars(old) and getattr(new, dest) == value != getattr(parse_args(base), dest)


def error_of(args) -> str:
    return error_line(lambda: main(args))


def test_missing_checkpoint_is_a_readable_error(data, tmp_path):
    data_dir, _ = data
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="not found"):
        cam(parse_args(cli(data_dir, tmp_path / "out", "--pretrained", str(missing))))
    err = error_of(cli(data_dir, tmp_path / "out", "--pretrained", str(missing)))
    assert err.startswith("error: checkpoint not found") and str(missing) in err
    assert not (tmp_path / "out").exists()


def test_bad_csv_stops_before_training(data, tmp_path):
    data_dir, _ = data
    bad = tmp_path / "bad.csv"
    bad.write_text("frames/move_left/move_left_000,twelve,0\n")
    args = cli(data_dir, tmp_path / "out", "--random_init")
    args[args.index("--test_csv") + 1] = str(bad)
    assert f"{bad}, line 1" in error_of(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["two_columns", "empty_test", "garbage_ckpt", "out_dir_is_a_file"])
def test_bad_inputs_end_in_one_line_and_leave_out_dir_alone(data, tmp_path, case):
    data_dir, _ = data
    args = cli(data_dir, tmp_path / "out", "--random_init")
    if case == "two_columns":
        (tmp_path / "two.csv").write_text("".join(f"{r.path},{r.frames}\n" for r in read_csv(data_dir / "test.csv")))
        args[args.index("--train_csv") + 1], expected = str(tmp_path / "two.csv"), "two.csv, line 1: 2 columns"
    elif case == "empty_test":
        (tmp_path / "empty.csv").write_text("\n")
        args[args.index("--test_csv") + 1], expected = str(tmp_path / "empty.csv"), "empty.csv: no rows"
    elif case == "garbage_ckpt":
        (tmp_path / "garbage.pth").write_bytes(bytes(range(256)) * 16)
        at = args.index("--random_init")
        args[at:at + 1] = ["--pretrained", str(tmp_path / "garbage.pth")]
        expected = "cannot read checkpoint"
    else:
        (tmp_path / "a_file").write_text("x")
        args[args.index("--out_dir") + 1], expected = str(tmp_path / "a_file"), "a_file is a file, not a folder"
    assert expected in error_of(args)
    assert not (tmp_path / "out").exists()


def test_constant_map_is_warned_with_the_size_where_it_varies(data, tmp_path, capsys):
    data_dir, _ = data
    small = cli(data_dir, tmp_path / "small", "--random_init", "--epochs", "1", "--num_videos", "0")
    small[small.index("--img_dim") + 1] = "32"
    main(small)
    # r3d18 halves the frame 5 times, rounding up: ceil(32 / 32) = 1 position, ceil(33 / 32) = 2
    out = capsys.readouterr().out
    assert ("warning: at --img_dim 32 the r3d18 high map is 1x1x1 (t x h x w), so the CAM is constant over each "
            "frame and the whole clip: every overlay is one flat colour; it varies over the frame from --img_dim 33"
            in out)
    main(cli(data_dir, tmp_path / "large", "--random_init", "--epochs", "1", "--num_videos", "0"))  # 48 px: 2x2
    assert "warning" not in capsys.readouterr().out


def test_constant_cam_warning_names_the_smallest_varying_size():
    assert constant_cam_warning("r3d18", 8, 48) is None
    assert constant_cam_warning("r3d18", 8, 7).endswith("from --img_dim 33")
    assert "1x1x1" in constant_cam_warning("r3d18", 8, 32) and "2x1x1" in constant_cam_warning("r3d18", 16, 32)  # T/8
    assert "varying only from frame to frame" in constant_cam_warning("r3d18", 16, 32)
    assert constant_cam_warning("r2plus1d18", 8, 32) is None  # its stem does not pool: 2x2 at 32 px
    smallest = int(constant_cam_warning("s3d", 8, 32).rsplit(" ", 1)[1])
    assert min(high_map_size("s3d", 8, smallest)[1:]) >= 2 and max(high_map_size("s3d", 8, smallest - 1)[1:]) == 1


def test_drawing_decodes_only_the_first_window(data, tmp_path, monkeypatch):
    import datasets.clips as clips_module
    data_dir, _ = data
    decoded = []
    real = clips_module.iter_frames

    def counting(folder, indices, need=None):
        decoded.extend(indices)
        return real(folder, indices, need)

    monkeypatch.setattr(clips_module, "iter_frames", counting)
    test_set = ClipDataset(data_dir / "test_small.csv", mode="test", seq=SEQ, img_dim=32)
    backbone = build_backbone("r3d18").eval()
    model = OrderClassifier(backbone, order_head(512))
    assert len(test_set.video_clips(0)) == 2 and len(decoded) == 12  # the demo videos: 12 frames, 2 windows
    decoded.clear()
    folders = draw_videos(model, test_set, num_videos=2, out_dir=tmp_path, device=torch.device("cpu"))
    assert len(folders) == 2 and decoded == list(range(SEQ)) * 2


def test_order_accuracy_forwards_a_long_video_in_chunks(data, tmp_path):
    """Every window of a video, with its reversed copy, goes through the model at most ``chunk`` at a time."""
    data_dir, _ = data
    write_csv(tmp_path / "long.csv", [read_csv(data_dir / "test.csv")[0]])
    test_set = ClipDataset(tmp_path / "long.csv", mode="test", seq=4, img_dim=32, lazy=True)  # 12 frames: 5 windows
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, x):  # says "forward" for every clip
            calls.append(len(x))
            return torch.tensor([[1.0, 0.0]]).expand(len(x), 2)

    from visualization.temporal_cam import order_accuracy
    from engine.tracking import Tracker
    result = order_accuracy(Recorder(), test_set, chunk=2, workers=0, device=torch.device("cpu"),
                            tracker=Tracker(tmp_path, enabled=False))
    assert calls == [4, 4, 2] and result["clips"] == 5
    assert result["forward_accuracy"] == 1.0 and result["reversed_accuracy"] == 0.0
