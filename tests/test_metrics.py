"""Downstream reports: top-k, per-class accuracy, confusion matrix, atomic JSON and PNG, the terminal's lines."""
import json

import pytest
import torch

from evaluation.metrics import accuracy_report, confusion_matrix, topk_correct
from evaluation.protocol import Protocol
from evaluation.report import epoch_line, read_class_names, run_line, save_confusion_png, write_json


def test_topk_and_per_class_match_a_loop():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 7, generator=gen)
    labels = torch.randint(0, 6, (40,), generator=gen)  # class 6 never occurs
    names = [f"c{i}" for i in range(7)]
    report = accuracy_report(probs, labels, names)
    rows = probs.tolist()
    top1 = sum(max(range(7), key=lambda c: r[c]) == y for r, y in zip(rows, labels.tolist())) / 40
    top5 = sum(y in sorted(range(7), key=lambda c: -r[c])[:5] for r, y in zip(rows, labels.tolist())) / 40
    assert report["top1"] == pytest.approx(top1)
    assert report["top5"] == pytest.approx(top5)
    for c in range(6):
        mine = [i for i, y in enumerate(labels.tolist()) if y == c]
        right = sum(max(range(7), key=lambda k: rows[i][k]) == c for i in mine)
        expected = right / len(mine) if mine else None
        assert report["per_class"][f"c{c}"] == (pytest.approx(expected) if expected is not None else None)
    assert report["per_class"]["c6"] is None
    assert sum(map(sum, report["confusion"])) == 40


def test_topk_with_fewer_classes_than_k():
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert topk_correct(probs, torch.tensor([0, 1]), 5).tolist() == [True, True]
    assert topk_correct(probs, torch.tensor([0, 1]), 1).tolist() == [False, False]


def test_confusion_counts_true_by_predicted():
    conf = confusion_matrix(torch.tensor([0, 1, 1, 2, 2]), torch.tensor([0, 0, 1, 2, 1]), 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_class_names_drop_ucf_indices_and_check_count(tmp_path):
    ind = tmp_path / "classInd.txt"
    ind.write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n\n")
    assert read_class_names(ind, 2) == ["ApplyEyeMakeup", "ApplyLipstick"]
    plain = tmp_path / "classes.txt"
    plain.write_text("left\nright\nstill\n")
    assert read_class_names(plain, 3) == ["left", "right", "still"]
    with pytest.raises(ValueError, match="3 names for 4 classes"):
        read_class_names(plain, 4)
    with pytest.raises(ValueError, match="cannot read"):
        read_class_names(tmp_path / "missing.txt", 2)


def test_json_and_png_are_written_whole(tmp_path):
    path = write_json({"top1": 0.5, "b": [1, 2]}, tmp_path / "out" / "results.json")
    assert json.loads(path.read_text()) == {"top1": 0.5, "b": [1, 2]}
    with pytest.raises(TypeError):
        write_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"top1": 0.5, "b": [1, 2]}  # the old file survives a failed write
    png = save_confusion_png([[3, 1], [0, 0]], ["a", "b"], tmp_path / "confusion.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.json"]


def test_the_run_line_names_the_checkpoint_videos_and_schedule():
    cfg = Protocol(train_csv="a.csv", test_csv="b.csv", out_dir="o", pretrained="ckpt.pth", num_classes=5, epochs=1,
                   batch_size=4, lr=0.05)
    assert run_line("probe", cfg, train=9, held_out=3, test=7) == \
        "probe of ckpt.pth on 9 train + 3 held-out / 7 test videos (5 classes): 1 epoch, batch 4, lr 0.05"
    assert run_line("retrieval", cfg, train=9, test=7, trains=False) == \
        "retrieval of ckpt.pth on 9 train / 7 test videos (5 classes)"


def test_the_epoch_line_shows_validation_only_when_there_is_one():
    assert epoch_line(2, 10, 1.23456, 0.5, 3.21) == "epoch 2/10: loss 1.2346, acc 0.500 (3.2 s)"
    assert epoch_line(3, 10, 0.5, 0.75, 0.04, val_top1=0.625) == \
        "epoch 3/10: loss 0.5000, acc 0.750, val top-1 0.625 (0.0 s)"
