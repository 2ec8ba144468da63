"""evaluation.protocol: video-level aggregation, frozen backbone, training loop, resume."""
import json
import math
from dataclasses import replace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import TensorDataset

from datasets import DataError
from evaluation.protocol import (Protocol, assert_unchanged, collate_videos, fit, load_trained_state, predict_videos,
                                 read_inputs, snapshot, split_train_val, start_run, train_epoch, trained_state,
                                 video_loader, video_probs)
from engine.tracking import Tracker


def softmax(row):
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


# video 0 (class 0): one confident clip for class 0, two mild ones for class 1 -> clip majority is wrong,
# the averaged softmax is right. Video 1 (class 2): two mild clips for 2, one confident for 1 -> the
# clip majority is right, the average is wrong. Video 2 (class 1): a single clip for 1.
CLIP_LOGITS = [[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0],
               [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 4.0, 0.0],
               [0.0, 2.0, 0.0]]
COUNTS = [3, 3, 1]
LABELS = [0, 2, 1]


def test_video_probs_average_softmax_over_clips():
    probs = video_probs(torch.tensor(CLIP_LOGITS), torch.tensor(COUNTS))
    start = 0
    for v, n in enumerate(COUNTS):
        rows = [softmax(r) for r in CLIP_LOGITS[start:start + n]]
        expected = [sum(r[c] for r in rows) / n for c in range(3)]
        torch.testing.assert_close(probs[v], torch.tensor(expected))
        start += n
    clip_labels = [y for y, n in zip(LABELS, COUNTS) for _ in range(n)]
    clip_acc = sum(max(range(3), key=lambda c: r[c]) == y for r, y in zip(CLIP_LOGITS, clip_labels)) / 7
    video_acc = (probs.argmax(1) == torch.tensor(LABELS)).float().mean().item()
    assert clip_acc == pytest.approx(4 / 7)  # clips 0, 3, 4, 6
    assert probs.argmax(1).tolist() == [0, 1, 1]
    assert video_acc == pytest.approx(2 / 3)


class LookupModel(nn.Module):
    """'Clips' are row indices into a fixed logit table."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table)
        self.calls = []

    def forward(self, x):  # x [n,1] float indices
        self.calls.append(len(x))
        return self.table[x[:, 0].long()]


def test_predict_videos_chunks_clips_and_keeps_videos_apart():
    videos, start = [], 0
    for n, y in zip(COUNTS, LABELS):
        videos.append((torch.arange(start, start + n, dtype=torch.float32)[:, None], y))  # [n,1]
        start += n
    loader = video_loader(videos, workers=0)
    model = LookupModel(CLIP_LOGITS)
    probs, labels = predict_videos(model, loader, torch.device("cpu"), chunk=2)
    assert labels.tolist() == LABELS
    torch.testing.assert_close(probs, video_probs(torch.tensor(CLIP_LOGITS), torch.tensor(COUNTS)))
    assert model.calls == [2, 1, 2, 1, 1]  # each video's clips in chunks of at most 2


def test_collate_videos_concatenates_and_counts():
    clips, labels, counts = collate_videos([(torch.zeros(2, 3), 4), (torch.ones(5, 3), 1)])
    assert clips.shape == (7, 3) and labels.tolist() == [4, 1] and counts.tolist() == [2, 5]
    assert clips[2:].eq(1).all() and clips[:2].eq(0).all()


def test_split_train_val_is_a_seeded_partition():
    names = [f"video_{i:03d}" for i in range(20)]
    train, val = split_train_val(names, 0.25, seed=3)
    assert len(val) == 5 and sorted(train + val) == list(range(20))
    assert split_train_val(names, 0.25, seed=3) == (train, val)
    assert split_train_val(names, 0.25, seed=4) != (train, val)
    assert split_train_val(names[:5], 0.0, seed=0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ValueError, match="empty split"):
        split_train_val(names[:3], 0.1, seed=0)


def ucf_names(classes=3, groups=6, clips=(1, 4)):
    """UCF-101-style names v_<Class>_gNN_cMM, with a varying number of clips per group."""
    return [f"v_Class{c}_g{g:02d}_c{k:02d}" for c in range(classes) for g in range(8, 8 + groups)
            for k in range(1, 1 + clips[0] + (c + g) % clips[1])]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_train_val_keeps_ucf101_groups_on_one_side(seed):
    names = ucf_names()
    train, val = split_train_val(names, 0.2, seed=seed)
    assert sorted(train + val) == list(range(len(names))) and val
    group = [name.rsplit("_c", 1)[0] for name in names]  # v_Class0_g08
    assert not {group[i] for i in train} & {group[i] for i in val}
    assert abs(len(val) - 0.2 * len(names)) <= 4  # whole groups of at most 4 clips: near the fraction
    assert split_train_val(names, 0.2, seed=seed) == (train, val)
    # the same group number in two classes is two groups (groups are defined per action)
    assert {group[i].split("_g")[1] for i in val} & {group[i].split("_g")[1] for i in train}


def test_split_train_val_mixes_groups_and_plain_names():
    names = ["v_A_g01_c01", "v_A_g01_c02", "v_A_g01_c03", "clip_x", "clip_y", "clip_z", "v_B_g02_c01"]
    for seed in range(6):
        train, val = split_train_val(names, 0.3, seed=seed)
        assert {0, 1, 2} <= set(train) or {0, 1, 2} <= set(val)


class BNNet(nn.Module):
    """A 'backbone' with BatchNorm statistics and a linear head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def toy_loader(n=32, batch=8):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=batch)


def test_frozen_backbone_in_eval_mode_is_unchanged(tmp_path):
    torch.manual_seed(0)
    net = BNNet()
    net.backbone.requires_grad_(False)
    before = snapshot(net.backbone)
    head_before = net.head.weight.detach().clone()
    optimizer = torch.optim.SGD(net.head.parameters(), lr=0.1)
    tracker = Tracker(tmp_path, enabled=False)
    stats, step = train_epoch(net, toy_loader(), optimizer, torch.device("cpu"), tracker, 0, 0, frozen=net.backbone)
    assert step == 4 and 0 <= stats["acc"] <= 1 and stats["loss"] > 0
    assert_unchanged(before, net.backbone)
    assert not torch.equal(head_before, net.head.weight)
    assert net.training and not net.backbone.training


def test_frozen_check_catches_batchnorm_statistics_drift(tmp_path):
    torch.manual_seed(0)
    net = BNNet()
    net.backbone.requires_grad_(False)
    before = snapshot(net.backbone)
    optimizer = torch.optim.SGD(net.head.parameters(), lr=0.1)
    train_epoch(net, toy_loader(), optimizer, torch.device("cpu"), Tracker(tmp_path, enabled=False), 0, 0)
    with pytest.raises(RuntimeError, match=r"frozen backbone changed.*running_mean"):
        assert_unchanged(before, net.backbone)


def test_frozen_check_catches_weight_change():
    net = BNNet()
    before = snapshot(net.backbone)
    with torch.no_grad():
        net.backbone[0].weight[0, 0] += 1e-3
    with pytest.raises(RuntimeError, match=r"1 tensors, e.g. 0.weight"):
        assert_unchanged(before, net.backbone)


def fit_args(out_dir, epochs, resume=""):
    return Protocol(train_csv="", test_csv="", out_dir=str(out_dir), epochs=epochs, batch_size=8, seed=0, workers=0,
                    resume=resume)


def toy_problem():
    """Separable features: class = argmax of the first three coordinates."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(48, 5, generator=gen)
    y = x[:, :3].argmax(1)
    val = [(x[i:i + 2], int(y[i])) for i in range(40, 48, 2)]  # 4 'videos' of 2 clips, label of the first clip
    return TensorDataset(x[:40], y[:40]), val


def run_fit(out_dir, epochs, resume="", with_val=False, net_seed=0):
    torch.manual_seed(net_seed)
    net = nn.Sequential(nn.Dropout(0.3), nn.Linear(5, 3))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2], gamma=0.1)
    args = fit_args(out_dir, epochs, resume)
    tracker, state, _ = start_run(args)
    train_set, val_set = toy_problem()
    chosen = fit(args, net, train_set, val_set if with_val else None, optimizer, scheduler, tracker, state,
                 torch.device("cpu"))
    tracker.close()
    return net, optimizer, chosen


def test_fit_learns_and_resumes_exactly(tmp_path):
    full, full_opt, chosen = run_fit(tmp_path / "full", 3)
    assert chosen == {"epoch": 3, "selected_by": "last epoch", "val_top1": None}
    assert full_opt.param_groups[0]["lr"] == pytest.approx(0.05)  # x0.1 after epoch 2
    x, y = toy_problem()[0].tensors
    full.eval()
    assert (full(x).argmax(1) == y).float().mean() > 0.8
    records = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and [r["step"] for r in records] == [5, 10, 15]

    run_fit(tmp_path / "split", 2)
    resumed, _, _ = run_fit(tmp_path / "split", 3, resume="auto", net_seed=123)  # weights come from last.pth
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    records = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_fit_with_validation_tests_the_best_epoch(tmp_path):
    net, _, chosen = run_fit(tmp_path, 3, with_val=True)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    scores = [r["val_top1"] for r in records]
    best_epoch = scores.index(max(scores)) + 1
    assert chosen == {"epoch": best_epoch, "selected_by": "validation top1", "val_top1": max(scores)}
    best = torch.load(tmp_path / "best.pth", weights_only=True)
    assert best["epoch"] == best_epoch
    for a, b in zip(best["model"].values(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoints_leave_out_the_frozen_backbone():
    torch.manual_seed(0)
    net = BNNet()
    state = trained_state(net, net.backbone)
    assert sorted(state) == ["head.bias", "head.weight"]
    assert len(trained_state(net, None)) == len(net.state_dict())
    other = BNNet()
    load_trained_state(other, {k: v + 1 for k, v in state.items()}, other.backbone)
    torch.testing.assert_close(other.head.weight, net.head.weight + 1)
    with pytest.raises(RuntimeError, match=r"missing \['head.bias'\]"):
        load_trained_state(other, {"head.weight": state["head.weight"]}, other.backbone)
    with pytest.raises(RuntimeError, match=r"unexpected \['backbone.0.weight'\]"):
        load_trained_state(other, {**state, "backbone.0.weight": torch.zeros(6, 4)}, other.backbone)


def labelled_csvs(tmp_path, train_labels, test_labels):
    """train.csv and test.csv over empty frame folders (read_inputs reads no frames)."""
    paths = []
    for name, labels in (("train", train_labels), ("test", test_labels)):
        rows = ""
        for i, label in enumerate(labels):
            (tmp_path / f"{name}_{i}").mkdir()
            rows += f"{name}_{i},20,{label}\n"
        (tmp_path / f"{name}.csv").write_text(rows)
        paths.append(str(tmp_path / f"{name}.csv"))
    return paths


def test_read_inputs_takes_the_classes_from_the_labels(tmp_path):
    train_csv, test_csv = labelled_csvs(tmp_path, [0, 3, 1, 2, 4], [50, 2])  # HMDB-51-like: max label 50
    cfg = Protocol(train_csv=train_csv, test_csv=test_csv, out_dir=str(tmp_path / "out"))
    resolved, train, val = read_inputs(cfg)
    assert resolved.classes == 51 and (train, val) == ([0, 1, 2, 3, 4], [])
    assert read_inputs(replace(cfg, dataset="hmdb51"))[0].classes == 51
    assert read_inputs(replace(cfg, num_classes=51, dataset="hmdb51"))[0].classes == 51
    with pytest.raises(DataError, match=r"--dataset ucf101 means 101 classes, .* give 51 \(max label 50\); drop "
                                        r"--dataset"):
        read_inputs(replace(cfg, dataset="ucf101"))
    with pytest.raises(DataError, match=r"--num_classes 60 means 60 classes"):
        read_inputs(replace(cfg, num_classes=60))
    with pytest.raises(DataError, match=r"test.csv, line 1: label 50 out of range, expected \[0, 40\)"):
        read_inputs(replace(cfg, num_classes=40))
    (tmp_path / "names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="2 names for 51 classes"):
        read_inputs(replace(cfg, class_names=str(tmp_path / "names.txt")))
    assert not (tmp_path / "out").exists()


def test_read_inputs_checks_both_csvs_and_the_split(tmp_path):
    train_csv, test_csv = labelled_csvs(tmp_path, [0, 1, 1], [1])
    cfg = Protocol(train_csv=train_csv, test_csv=test_csv, out_dir=str(tmp_path / "out"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv: no rows"):
        read_inputs(replace(cfg, test_csv=str(tmp_path / "empty.csv")))
    (tmp_path / "two.csv").write_text("train_0,20\n")
    with pytest.raises(DataError, match=r"two.csv, line 1: 2 columns, expected 3"):
        read_inputs(replace(cfg, train_csv=str(tmp_path / "two.csv")))
    with pytest.raises(DataError, match="empty split"):
        read_inputs(replace(cfg, val_fraction=0.1))
    assert read_inputs(replace(cfg, val_fraction=0.4))[1:] in [([0, 1], [2]), ([0, 2], [1]), ([1, 2], [0])]


def scalars(out_dir):
    """Every TensorBoard scalar of a run, as read by TensorBoard: {tag: [(step, value)]}."""
    acc = EventAccumulator(str(out_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_logs_after_a_kill_and_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    run_fit(tmp_path / "full", 3, with_val=True)

    import evaluation.protocol as protocol
    real_save, saves = protocol.save_checkpoint, []

    def killed_at_the_third_last_pth(state, path):
        if path.name == "last.pth":
            saves.append(state["epoch"])
            if len(saves) == 3:  # epoch 3 is trained, validated and logged: killed before its checkpoint
                raise KeyboardInterrupt
        return real_save(state, path)

    monkeypatch.setattr(protocol, "save_checkpoint", killed_at_the_third_last_pth)
    opened = []
    monkeypatch.setattr(protocol, "Tracker", lambda *a, **k: opened.append(Tracker(*a, **k)) or opened[-1])
    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path / "split", 3, with_val=True)
    opened[-1].close()  # everything the killed run logged is on disk
    monkeypatch.setattr(protocol, "save_checkpoint", real_save)
    run_fit(tmp_path / "split", 3, resume="auto", with_val=True, net_seed=123)

    full, split = scalars(tmp_path / "full"), scalars(tmp_path / "split")
    assert sorted(full) == ["train/acc", "train/loss", "train/lr", "val/top1"]
    assert [step for step, _ in full["val/top1"]] == [4, 9, 14]  # the last step of each 5-step epoch
    assert split == full
    assert (tmp_path / "split" / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()
