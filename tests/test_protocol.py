"""evaluation.protocol: the downstream flags, their checks and the frozen Protocol they are read into."""
import argparse

import pytest

from evaluation.protocol import RESUME_MAY_CHANGE, Protocol, add_downstream_args, check_downstream_args


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_downstream_args(parser, out_dir="runs/x", lr=0.1, wd=1e-3, epochs=10, schedule=[6, 8], batch_size=4)
    args = parser.parse_args(["--random_init", "--train_csv", "a.csv", "--test_csv", "b.csv", *argv])
    cfg = Protocol.from_flags(vars(args))
    check_downstream_args(parser, cfg)
    return cfg, parser


def test_flags_are_read_into_the_protocol_and_kept_whole():
    cfg, _ = parse("--seq", "8", "--schedule", "3", "5")
    assert (cfg.seq, cfg.schedule, cfg.lr, cfg.random_init, cfg.overwrite) == (8, (3, 5), 0.1, True, False)
    assert cfg.flags["schedule"] == [3, 5] and cfg.flags["train_csv"] == "a.csv"
    assert cfg.checkpoint_name == "random_init (seed 0)"
    with pytest.raises(ValueError, match="the number of classes is not known"):
        cfg.classes


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-0.01"], "--lr must be positive, got -0.01"),
    (["--lr", "0"], "--lr must be positive, got 0"),
    (["--wd=-1e-4"], "--wd must be >= 0, got -0.0001"),
    (["--seq", "0"], "--seq must be at least 1"),
    (["--arch", "s3d", "--seq", "4"], "--seq 4: s3d needs at least 5 frames per clip"),
    (["--resume", "auto", "--overwrite"], "give one of them"),
    (["--schedule", "8", "6"], "increasing"),
])
def test_values_that_cannot_work_stop_at_parse_time(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_the_shortest_clips_each_backbone_runs_on_are_accepted():
    assert parse("--seq", "1")[0].seq == 1  # the ResNets' strides leave a step from 1 frame on
    assert parse("--arch", "s3d", "--seq", "5")[0].seq == 5


def test_help_names_the_flags_a_resume_may_change():
    _, parser = parse()
    text = " ".join(parser.format_help().split())
    for name in RESUME_MAY_CHANGE:
        if name != "resume":
            assert f"--{name}" in text[text.index("--resume RESUME"):]


@pytest.mark.parametrize("primary, alias, dest, value", [
    ("--epoch", "--epochs", "epochs", 7), ("--train_batch", "--batch_size", "batch_size", 3)])
def test_the_old_spellings_are_the_same_flags(primary, alias, dest, value):
    """``--epoch`` and ``--train_batch`` as train.py spells them; ``--epochs`` and ``--batch_size`` are kept. Both
    are read into the one name a checkpoint records (so a resume compares them as one flag)."""
    new, parser = parse(primary, str(value))
    old, _ = parse(alias, str(value))
    assert getattr(new, dest) == getattr(old, dest) == value and new.flags == old.flags
    assert new.flags[dest] == value and primary[2:] not in new.flags
    assert getattr(parse()[0], dest) != value  # not the default by chance
    usage = " ".join(parser.format_usage().split())
    assert f"[{primary} N]" in usage and alias not in usage  # the usage line spells the primary name
