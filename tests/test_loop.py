"""evaluation.loop: video-level aggregation, frozen backbone, training with exact resume (also after a stop on a
signal inside an epoch), the run's folder (resume checks, finished runs, extension)."""
import json
import math
import os
import signal
from dataclasses import replace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import TensorDataset

import engine.run
from engine.checkpoint import CheckpointError
from engine.errors import Interrupted
from engine.tracking import Tracker
from evaluation import loop
from evaluation.data import video_loader
from evaluation.loop import (assert_unchanged, downstream_run, fit, load_trained_state, predict_videos, snapshot,
                             train_epoch, trained_state, video_probs)
from evaluation.protocol import Protocol


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


class SignalAt(nn.Module):
    """The identity; sends this process ``signum`` in its ``at``-th forward pass in training mode (0: never)."""

    def __init__(self, at=0, signum=signal.SIGTERM):
        super().__init__()
        self.at, self.signum, self.calls = at, signum, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), self.signum)
        return x


def run_fit(out_dir, epochs, resume="", with_val=False, net_seed=0, signal_at=0, flags=None, signum=signal.SIGTERM):
    torch.manual_seed(net_seed)
    net = nn.Sequential(SignalAt(signal_at, signum), nn.Dropout(0.3), nn.Linear(5, 3))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2], gamma=0.1)
    args = fit_args(out_dir, epochs, resume)
    args = replace(args, flags={"epochs": epochs, "lr": 0.5, **(flags or {})})
    train_set, val_set = toy_problem()
    with downstream_run(args) as run:
        if run.done is not None:
            return None, None, run.done
        chosen = fit(args, net, train_set, val_set if with_val else None, optimizer, scheduler, run.tracker,
                     run.state, run.device, stop=run.stop)
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


def scalars(out_dir):
    """Every TensorBoard scalar of a run, as read by TensorBoard: {tag: [(step, value)]}."""
    acc = EventAccumulator(str(out_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_logs_after_a_kill_and_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    run_fit(tmp_path / "full", 3, with_val=True)

    real_save, saves = engine.run.save_checkpoint, []

    def killed_at_the_third_last_pth(state, path):
        if path.name == "last.pth":
            saves.append(state["epoch"])
            if len(saves) == 3:  # epoch 3 is trained, validated and logged: killed before its checkpoint
                raise KeyboardInterrupt
        return real_save(state, path)

    monkeypatch.setattr(engine.run, "save_checkpoint", killed_at_the_third_last_pth)
    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path / "split", 3, with_val=True)
    monkeypatch.setattr(engine.run, "save_checkpoint", real_save)
    run_fit(tmp_path / "split", 3, resume="auto", with_val=True, net_seed=123)

    full, split = scalars(tmp_path / "full"), scalars(tmp_path / "split")
    assert sorted(full) == ["train/acc", "train/loss", "train/lr", "val/top1"]
    assert [step for step, _ in full["val/top1"]] == [4, 9, 14]  # the last step of each 5-step epoch
    assert split == full
    assert (tmp_path / "split" / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()


@pytest.mark.parametrize("with_val", [False, True])
def test_a_sigterm_inside_an_epoch_saves_that_step_and_the_resume_is_exact(tmp_path, capfd, with_val):
    full, full_opt, full_chosen = run_fit(tmp_path / "full", 3, with_val=with_val)
    # 40 samples in batches of 8: 5 steps an epoch; the 7th forward pass is step 2 of epoch 2
    with pytest.raises(Interrupted) as info:
        run_fit(tmp_path / "split", 3, with_val=with_val, signal_at=7)
    assert info.value.status == 143
    assert str(info.value) == ("interrupted at epoch 2, step 2 of the epoch (saved in "
                               f"{tmp_path / 'split' / 'last.pth'}); continue with --resume auto")
    assert "SIGTERM received: stopping after the current step" in capfd.readouterr().err
    last = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    assert (last["epoch"], last["step_in_epoch"], last["step"]) == (1, 2, 7)
    assert not (tmp_path / "split" / ".lock").exists() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    resumed, resumed_opt, chosen = run_fit(tmp_path / "split", 3, resume="auto", with_val=with_val, net_seed=123)
    assert chosen == full_chosen
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert (a - b).abs().max().item() == 0.0
    momentum = [opt.state_dict()["state"][0]["momentum_buffer"] for opt in (full_opt, resumed_opt)]
    assert momentum[0].equal(momentum[1])
    assert (tmp_path / "split" / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()
    assert scalars(tmp_path / "split") == scalars(tmp_path / "full")


def test_a_sigint_in_an_epochs_last_step_stops_at_the_epochs_end(tmp_path):
    run_fit(tmp_path / "full", 2, with_val=True)
    with pytest.raises(Interrupted) as info:
        run_fit(tmp_path / "split", 2, with_val=True, signal_at=5, signum=signal.SIGINT)  # Ctrl-C in epoch 1's last step
    assert info.value.status == 130
    assert str(info.value) == (f"interrupted after epoch 1 (saved in {tmp_path / 'split' / 'last.pth'}); continue with "
                               "--resume auto")
    assert [json.loads(line)["epoch"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()] == [1]
    run_fit(tmp_path / "split", 2, resume="auto", net_seed=7, with_val=True)
    assert (tmp_path / "split" / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()
    assert scalars(tmp_path / "split") == scalars(tmp_path / "full")


def test_a_finished_run_has_nothing_left_to_do_and_a_larger_epochs_extends_it(tmp_path, capsys):
    out = tmp_path / "run"
    run_fit(out, 2)
    loop.write_json({"top1": 0.5, "args": {"epochs": 2}}, out / "results.json")  # what test_and_report writes
    capsys.readouterr()
    _, _, done = run_fit(out, 2, resume="auto")
    assert done == {"top1": 0.5, "args": {"epochs": 2}}
    assert capsys.readouterr().out == (f"nothing left to do: {out / 'last.pth'} is the end of a finished run of 2 "
                                       f"epochs ({out / 'results.json'}: top-1 50.00%); to train longer, give a "
                                       "larger --epoch with --resume auto\n")
    full, _, _ = run_fit(tmp_path / "full", 3)
    extended, _, chosen = run_fit(out, 3, resume="auto", net_seed=5)
    assert "extending the run of --epoch 2 to --epoch 3" in capsys.readouterr().out
    assert chosen["epoch"] == 3
    for a, b in zip(full.state_dict().values(), extended.state_dict().values()):
        assert (a - b).abs().max().item() == 0.0
    with pytest.raises(CheckpointError, match=r"--resume \S+last.pth has trained 3 epochs and 0 steps, more than "
                                              r"--epoch 2: a run cannot be shortened; give --epoch 3 or more"):
        run_fit(out, 2, resume="auto")


def test_a_resume_with_other_flags_is_refused_naming_each(tmp_path):
    run_fit(tmp_path, 1, flags={"seq": 16, "wd": 1e-3, "workers": 4})
    with pytest.raises(CheckpointError) as info:
        run_fit(tmp_path, 2, resume="auto", flags={"seq": 8, "wd": 1e-3, "lr": 0.1, "workers": 0})
    assert str(info.value).startswith(f"--resume {tmp_path / 'last.pth'} was written with other flags: "
                                      "--lr 0.5 -> 0.1, --seq 16 -> 8. A resume keeps the flags of the run (only --class_names --epoch "
                                      "--out_dir --overwrite --resume --workers may change)")


def test_a_resume_without_a_checkpoint_removes_leftovers_and_starts(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "features_0123abcd.pt").write_bytes(b"a cache")
    run_fit(tmp_path, 1, resume="auto")
    assert "removed log.jsonl, tensorboard, left by a run that stopped before its first checkpoint" in \
        capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]
    assert (tmp_path / "features_0123abcd.pt").read_bytes() == b"a cache"


def test_testing_stops_after_the_current_video(tmp_path):
    videos = [(torch.zeros(2, 1), 0)] * 3
    stop = loop.GracefulStop(notice=None)
    model = LookupModel([[1.0, 0.0, 0.0]])
    model.forward = lambda x: (stop.request(signal.SIGTERM), torch.zeros(len(x), 3))[1]
    with stop, pytest.raises(Interrupted, match="interrupted while testing; the training is saved"):
        predict_videos(model, video_loader(videos, workers=0), torch.device("cpu"), chunk=2, stop=stop)

