"""scripts/extract_features.py: per-video and per-clip pooled features of a CSV, and its errors."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets import ClipDataset, read_csv
from datasets.demo import make_demo_data
from datasets.index import write_csv
from engine.checkpoint import save_checkpoint
from models import MFOModel, build_backbone
from scripts.extract_features import main
from tests.cli import error_line

ROOT = Path(__file__).resolve().parents[1]
SEQ, IMG = 8, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    demo = make_demo_data(root / "demo", videos=8, frames=20, seed=1)
    write_csv(demo / "small.csv", read_csv(demo / "train.csv")[:3])
    torch.manual_seed(0)
    model = MFOModel("r3d18", channel=8, cluster=4)
    ckpt = save_checkpoint({"model": model.state_dict()}, root / "mfo.pth")
    return demo / "small.csv", ckpt, model


def test_features_match_the_backbone_clip_by_clip(data, tmp_path):
    csv_file, ckpt, mfo = data
    out = tmp_path / "feats.pt"
    assert main(["--pretrained", str(ckpt), "--csv", str(csv_file), "--out", str(out), "--seq", str(SEQ),
                 "--img_dim", str(IMG), "--views", "five", "--per_clip", "--workers", "0", "--batch_size", "3"]) == 0
    saved = torch.load(out, weights_only=True)
    rows = read_csv(csv_file, require_labels=True)
    assert saved["paths"] == [str(r.path) for r in rows]
    assert saved["labels"].tolist() == [r.label for r in rows]
    assert (saved["arch"], saved["seq"], saved["img_dim"], saved["views"]) == ("r3d18", SEQ, IMG, "five")

    # independent computation: the pretrained backbone on every test clip, pooled over t, h, w
    backbone = build_backbone("r3d18")
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in mfo.state_dict().items()
                              if k.startswith("backbone.")})
    backbone.eval()
    dataset = ClipDataset(csv_file, "test", seq=SEQ, img_dim=IMG, views="five")
    want, counts = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            clips = dataset[i][0]  # [N,3,T,H,W]
            want.append(backbone(clips)[2].mean(dim=(2, 3, 4)))
            counts.append(len(clips))
    assert saved["clip_counts"].tolist() == counts and all(n % 5 == 0 for n in counts)
    torch.testing.assert_close(saved["clip_features"], torch.cat(want), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(saved["features"], torch.stack([w.mean(0) for w in want]), rtol=1e-4, atol=1e-5)
    assert saved["features"].shape == (3, 512)


def test_without_per_clip_only_video_features(data, tmp_path):
    csv_file, ckpt, _ = data
    out = tmp_path / "feats.pt"
    cmd = [sys.executable, "scripts/extract_features.py", "--pretrained", str(ckpt), "--csv", str(csv_file),
           "--out", str(out), "--seq", str(SEQ), "--img_dim", str(IMG), "--workers", "0"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "features of 3 videos (512 wide)" in run.stdout
    saved = torch.load(out, weights_only=True)
    assert "clip_features" not in saved and saved["features"].shape == (3, 512)


def error_of(argv) -> str:
    return error_line(lambda: main(argv))


def test_bad_checkpoint_csv_or_out_is_one_line_and_writes_nothing(data, tmp_path):
    csv_file, ckpt, _ = data
    out = tmp_path / "feats.pt"
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in error_of(["--pretrained", str(tmp_path / "junk.pth"), "--csv", str(csv_file),
                                                 "--out", str(out), "--workers", "0"])
    (tmp_path / "bad.csv").write_text("only_a_path\n")
    assert "bad.csv" in error_of(["--pretrained", str(ckpt), "--csv", str(tmp_path / "bad.csv"), "--out", str(out),
                                  "--workers", "0"])
    (tmp_path / "a_file").write_text("x")
    assert "a_file is a file" in error_of(["--pretrained", str(ckpt), "--csv", str(csv_file), "--out",
                                           str(tmp_path / "a_file" / "feats.pt"), "--workers", "0"])
    assert "is a folder; give the file to write" in error_of(["--pretrained", str(ckpt), "--csv", str(csv_file),
                                                              "--out", str(tmp_path), "--workers", "0"])
    assert not out.exists() and list(tmp_path.glob(".feats.pt*")) == []


def test_unlabelled_videos_get_label_minus_one(data, tmp_path):
    csv_file, ckpt, _ = data
    rows = read_csv(csv_file)
    write_csv(tmp_path / "unlabelled.csv", [r._replace(label=None) for r in rows])  # path,frames
    assert "," not in (tmp_path / "unlabelled.csv").read_text().splitlines()[0].split(",", 1)[1]
    common = ["--pretrained", str(ckpt), "--seq", str(SEQ), "--img_dim", str(IMG), "--workers", "0"]
    assert main([*common, "--csv", str(tmp_path / "unlabelled.csv"), "--out", str(tmp_path / "u.pt")]) == 0
    assert main([*common, "--csv", str(csv_file), "--out", str(tmp_path / "l.pt")]) == 0
    unlabelled, labelled = (torch.load(tmp_path / name, weights_only=True) for name in ("u.pt", "l.pt"))
    assert unlabelled["labels"].tolist() == [-1] * len(rows) and unlabelled["labels"].dtype == torch.int64
    assert unlabelled["paths"] == labelled["paths"]
    assert torch.equal(unlabelled["features"], labelled["features"])


def test_an_existing_out_needs_overwrite_and_the_checkpoint_is_never_replaced(data, tmp_path):
    csv_file, ckpt, _ = data
    common = ["--pretrained", str(ckpt), "--csv", str(csv_file), "--seq", str(SEQ), "--img_dim", str(IMG),
              "--workers", "0"]
    out = tmp_path / "feats.pt"
    out.write_bytes(b"earlier features")
    assert error_of([*common, "--out", str(out)]) == (f"error: --out {out} already exists; pass --overwrite to "
                                                      "replace it, or pick another --out")
    assert out.read_bytes() == b"earlier features"
    assert main([*common, "--out", str(out), "--overwrite"]) == 0
    assert torch.load(out, weights_only=True)["features"].shape == (3, 512)

    before = ckpt.read_bytes()
    (tmp_path / "soft.pth").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.pth")
    for same in (ckpt, tmp_path / "soft.pth", tmp_path / "hard.pth"):
        for extra in ([], ["--overwrite"]):
            err = error_of([*common, "--out", str(same), *extra])
            assert err == (f"error: --out {same} is the --pretrained checkpoint {ckpt}: writing the features there "
                           "would destroy it; pick another --out"), err
    assert ckpt.read_bytes() == before and list(tmp_path.glob(".*.tmp")) == []


FULL_DISK = """
import errno, io, sys, types, torch
from engine import checkpoint
from scripts.extract_features import main
save = torch.save

def full_disk(state, f):  # the size the file would have, then the error of a full disk
    buffer = io.BytesIO()
    save(state, buffer)
    print("bytes", len(buffer.getvalue()), flush=True)
    raise OSError(errno.ENOSPC, "No space left on device")

checkpoint.torch.save = full_disk
checkpoint.shutil.disk_usage = lambda folder: types.SimpleNamespace(free=12345)  # 12 KiB left
main(sys.argv[1:])
"""


def test_a_full_disk_names_out_and_the_sizes_on_a_line_of_its_own(data, tmp_path):
    csv_file, ckpt, _ = data
    out = tmp_path / "feats.pt"
    cmd = [sys.executable, "-c", FULL_DISK, "--pretrained", str(ckpt), "--csv", str(csv_file), "--out", str(out),
           "--seq", str(SEQ), "--img_dim", str(IMG), "--per_clip", "--workers", "0"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=300)  # bytes: text mode reads \r as \n
    stdout, stderr = run.stdout.decode(), run.stderr.decode()
    assert run.returncode == 1, stderr
    size = int(stdout.split("bytes ")[1].split()[0])  # what torch.save would have written
    lines = stderr.split("\n")  # a carriage return does not end a line in a log file
    line = next(line for line in lines if "could not write" in line)
    assert "features:" in stderr and line.startswith("error: "), repr(line)  # the bar's line ended before it
    match = re.fullmatch(rf"error: could not write features {re.escape(str(out))}: \[Errno 28\] No space left on "
                         rf"device\. It needs about (\d+) KiB and 12 KiB are free in {re.escape(str(tmp_path))}; "
                         r"free some space or write to another folder \(--out\)\. The previous file, if any, is "
                         r"intact\.", line)
    assert match, line
    assert 0.8 * size <= int(match[1]) * 1024 <= size, (match[1], size)  # the tensors' bytes: most of the file
    assert not out.exists() and list(tmp_path.iterdir()) == []
