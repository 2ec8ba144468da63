"""Tests of engine.tracking: argument print-out, non-finite stop message, JSON lines, TensorBoard scalars and
progress bars in log files."""
import io
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.tracking import NonFiniteLossError, Tracker, check_finite, format_args


def test_format_args_is_sorted_and_names_the_commit():
    text = format_args({"zeta": 1, "alpha": "a"}, commit="abc123")
    lines = text.splitlines()
    assert lines[0] == "git commit: abc123" and lines[2] == "  alpha: 'a'" and lines[3] == "  zeta: 1"
    assert "unknown" in format_args({"x": 1})


def test_check_finite_names_step_and_terms():
    check_finite(torch.tensor(1.5), {}, step=1)
    with pytest.raises(NonFiniteLossError, match=r"inf at global step 7 \(terms: a=1, b=nan\)"):
        check_finite(torch.tensor(float("inf")), {"b": torch.tensor(float("nan")), "a": torch.tensor(1.0)}, step=7)


def test_tracker_writes_json_lines_and_scalars_only_when_enabled(tmp_path):
    tracker = Tracker(tmp_path / "run")
    tracker.scalars({"loss": 2.0}, step=1, prefix="train/")
    tracker.scalars({"loss": 1.0}, step=2, prefix="train/")
    tracker.epoch({"epoch": 0, "loss": 1.5})
    tracker.epoch({"epoch": 1, "loss": 1.0})
    tracker.close()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records == [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 1.0}]
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.0), (2, 1.0)]

    silent = Tracker(tmp_path / "other", enabled=False)
    silent.scalars({"loss": 1.0}, step=1)
    silent.epoch({"epoch": 0})
    assert not (tmp_path / "other").exists()
    assert silent.progress(range(3)).disable


def test_truncate_log_keeps_the_lines_before_a_resume(tmp_path):
    tracker = Tracker(tmp_path, tensorboard=False)
    for epoch in (0, 1, 2, 1):
        tracker.epoch({"epoch": epoch, "loss": float(epoch)})
    tracker.truncate_log("epoch", below=2)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [0, 1, 1]
    tracker.truncate_log("epoch", below=0)
    assert (tmp_path / "log.jsonl").read_text() == ""


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_bar_that_would_clear_itself_ends_its_line_where_it_cannot_be_cleared(tmp_path):
    """In a log file a cleared bar is its text and a carriage return: the next line (an error) would follow it."""
    tracker = Tracker(tmp_path, tensorboard=False)
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        for _ in tracker.progress(range(3), file=stream, leave=False, desc="features"):
            pass
    last = log.getvalue().split("\r")[-1]
    assert last.startswith("features: 100%") and "3/3" in last and last.endswith("\n")  # kept, its line ended
    assert terminal.getvalue().startswith("\rfeatures:") and terminal.getvalue().endswith("\r")  # cleared
    assert terminal.getvalue().split("\r")[-2].strip() == ""
