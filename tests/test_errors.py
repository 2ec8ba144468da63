"""engine.errors: one base for the user's errors, carried across DataLoader workers and pickles, and one exit."""
import ast
import importlib
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.index import DataError, FrameDecodeError
from datasets.videos import VideoDecodeError
from engine.checkpoint import CheckpointError
from engine.errors import ErrorExit, Interrupted, UserError, exit_on_error, worker_message
from engine.rundir import OutDirError
from engine.tracking import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]

# every user error class of the project, built as the code builds it
ERRORS = [
    (DataError, ("train.csv, line 3: label 7 out of range",)),
    (FrameDecodeError, ("v/image_00004.jpg", "truncated")),
    (VideoDecodeError, ("v.mp4", 12, "corrupt packet")),
    (CheckpointError, ("checkpoint not found: x.pth",)),
    (OutDirError, ("--out_dir runs/x is in use by another run",)),
    (NonFiniteLossError, ("non-finite loss nan at global step 3",)),
]


def project_error_classes() -> set[str]:
    """``module.Class`` of every class named ``*Error`` defined in the project's packages and scripts."""
    found = set()
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in ("tests", ".venv") or parts[0].startswith("."):
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.add(f"{module}.{node.name}")
    return found


def test_every_error_class_of_the_project_is_a_user_error():
    names = project_error_classes()
    assert {f"{cls.__module__}.{cls.__name__}" for cls, _ in ERRORS} <= names  # the list below covers them
    for name in sorted(names):
        module, _, cls = name.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), cls), UserError), name
    assert issubclass(FrameDecodeError, OSError) and issubclass(DataError, ValueError)  # callers catch these too


class Raising(Dataset):
    def __init__(self, cls, args):
        self.cls, self.args = cls, args

    def __len__(self):
        return 1

    def __getitem__(self, i):
        try:
            raise OSError("the cause")
        except OSError as cause:  # a chained traceback: the error's own line is the last one
            raise self.cls(*self.args) from cause


def raised_in_a_worker(dataset: Dataset) -> BaseException:
    """What the first batch of a one-worker loader raises here (the loader's workers ended right away)."""
    batches = iter(DataLoader(dataset, num_workers=1))
    try:
        next(batches)
    except Exception as error:
        error.__traceback__ = None  # its frames hold the loader: let it go now, not at the next collection
        return error
    finally:
        del batches
    raise AssertionError("the loader raised nothing")


@pytest.mark.parametrize("cls, args", ERRORS, ids=[cls.__name__ for cls, _ in ERRORS])
def test_a_loader_workers_error_arrives_as_its_class_with_its_message(cls, args):
    error = raised_in_a_worker(Raising(cls, args))
    assert type(error) is cls and str(error) == str(cls(*args)) and "\n" not in str(error)
    assert error.origin.startswith(f"Caught {cls.__name__} in DataLoader worker process 0")


def test_worker_message_reads_the_last_line_of_the_class():
    text = ("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1\nOSError: inner\n\nThe above exception was the direct cause...\n'
            "Traceback (most recent call last):\n  ...\ndatasets.index.DataError: a.csv: no rows\n")
    assert worker_message(text, DataError) == "a.csv: no rows"
    assert worker_message("a plain message", DataError) == "a plain message"


@pytest.mark.parametrize("cls, args", ERRORS, ids=[cls.__name__ for cls, _ in ERRORS])
def test_pickling_keeps_class_message_and_attributes(cls, args):
    error = cls(*args)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls and str(back) == str(error) and back.__dict__ == error.__dict__
    assert pickle.loads(pickle.dumps(Interrupted("stopped", 15))).status == 143


def test_exit_on_error_user_error_is_one_line_and_status(capsys):
    with pytest.raises(SystemExit) as info:
        with exit_on_error():
            raise DataError("a.csv, line 2: 1 columns")
    assert isinstance(info.value, ErrorExit) and str(info.value) == "error: a.csv, line 2: 1 columns"
    assert info.value.code == "error: a.csv, line 2: 1 columns"  # Python prints it and exits with status 1
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as info:
        with exit_on_error(status=2):
            raise CheckpointError("bad")
    assert info.value.code == 2 and capsys.readouterr().err == "error: bad\n"


@pytest.mark.parametrize("raised, status, line", [
    (Interrupted("interrupted at epoch 2, step 3 of the epoch; continue with --resume auto", 15), 143,
     "interrupted at epoch 2, step 3 of the epoch; continue with --resume auto"),
    (Interrupted("", 2), 130, ""),  # a quiet rank
    (KeyboardInterrupt(), 130, "interrupted: stopped at once, saving nothing more"),
])
def test_exit_on_error_interruptions(capsys, raised, status, line):
    with pytest.raises(SystemExit) as info:
        with exit_on_error():
            raise raised
    assert info.value.code == status and str(info.value) == line
    assert capsys.readouterr().err == (line + "\n" if line else "")


def test_exit_on_error_leaves_bugs_alone():
    with pytest.raises(ZeroDivisionError):
        with exit_on_error():
            1 / 0
    with pytest.raises(SystemExit) as info:
        with exit_on_error():
            raise torch.multiprocessing.ProcessRaisedException("Traceback ...\nKeyError: 'x'", 1, 42)
    assert str(info.value.code).startswith("error in a worker process:\nTraceback")


@pytest.mark.parametrize("kind, bounds, text, expected", [
    (int, dict(least=1), "1", 1), (int, dict(least=1), "0", "must be at least 1, got 0"),
    (float, dict(above=0), "1e-3", 1e-3), (float, dict(above=0), "0", "must be positive, got 0"),
    (float, dict(above=0), "nan", "must be positive, got nan"),
    (float, dict(least=0, most=1), "1", 1.0), (float, dict(least=0, most=1), "1.5", "must be at least 0 and at most 1, got 1.5"),
    (float, dict(least=0, most=1), "-0.1", "must be at least 0 and at most 1, got -0.1"),
    (int, dict(least=0), "2.5", "invalid int value: '2.5'"),
])
def test_number_is_an_argparse_type_whose_bounds_are_one_usage_line(kind, bounds, text, expected, capsys):
    import argparse

    from engine.errors import number

    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--x", type=number(kind, **bounds))
    if not isinstance(expected, str):
        value = parser.parse_args(["--x", text]).x
        assert value == expected and type(value) is kind
        return
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--x", text])
    assert info.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"tool: error: argument --x: {expected}"
