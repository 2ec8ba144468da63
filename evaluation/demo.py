"""The demos: ``--demo`` of ``train.py``, ``eval_linear.py``, ``finetune.py`` and ``visualization/temporal_cam.py``.

``python train.py --demo`` builds generated videos in ``data/demo`` and pretrains a tiny configuration on them
in ``runs/demo``. Each downstream demo evaluates that run (``runs/demo/last.pth``) on the demo's labelled
videos (``train.csv``, ``test.csv``, ``classes.txt``) in a minute or two on a CPU, and writes in its own
folder, ``runs/demo_<name>`` (``_random_init`` added for the untrained baseline). Paths are relative to the
current folder. The demo's values replace the parser's defaults, so explicit flags still win. In its own
folder a demo starts again on every run (it implies ``--overwrite``) unless it is given ``--resume``.
docs/evaluation.md lists the downstream demos in the order to try them.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from datasets.demo import make_demo_data
from engine.checkpoint import CheckpointError

DEMO_DATA = Path("data/demo")  # where every demo builds the data when it is missing
DEMO_RUN = Path("runs/demo")  # train.py's demo --out_dir
DEMO_CHECKPOINT = DEMO_RUN / "last.pth"  # a finished or interrupted pretraining demo has it

# train.py's: it crosses the graph split and the queue start in about a minute on a CPU, and keeps one epoch file
# (the last): with last.pth about 540 MB on disk
_PRETRAIN = dict(seq=8, img_dim=32, train_batch=8, workers=0, cluster=8, epoch=4, split=2, queue_start=1, lr_decay=3,
                 queue_size=64, save_every=0, keep_epochs=4, out_dir=str(DEMO_RUN),
                 csv_file=str(DEMO_DATA / "pretrain.csv"), monitor_train_csv=str(DEMO_DATA / "train.csv"),
                 monitor_test_csv=str(DEMO_DATA / "test.csv"))
_INPUTS = dict(pretrained=str(DEMO_CHECKPOINT), train_csv=str(DEMO_DATA / "train.csv"),
               test_csv=str(DEMO_DATA / "test.csv"), workers=0, batch_size=8, seq=_PRETRAIN["seq"])
_LABELS = dict(_INPUTS, class_names=str(DEMO_DATA / "classes.txt"), img_dim=32)
# each demo's defaults. linear: the protocol's lr 0.1 scaled to the batch (64 -> 8); cam: 48 pixels give r3d18 a
# 2x2 last map, so the CAM varies over the frame (32 would give one position: a flat colour)
DEMOS = {
    "pretrain": _PRETRAIN,
    "linear": dict(_LABELS, epochs=30, schedule=[20], lr=0.01, out_dir="runs/demo_linear"),
    "retrieval": dict(_LABELS, out_dir="runs/demo_retrieval"),
    "finetune": dict(_LABELS, epochs=10, schedule=[8], out_dir="runs/demo_finetune"),
    "cam": dict(_INPUTS, img_dim=48, epochs=10, num_videos=4, out_dir="runs/demo_cam"),
}
# what each demo suggests next, in the order of docs/evaluation.md
NEXT = {
    "linear": "python eval_linear.py --demo --retrieval",
    "retrieval": "python finetune.py --demo",
    "finetune": "python visualization/temporal_cam.py --demo",
    "cam": "the same tools on UCF-101 / HMDB-51: docs/evaluation.md",
}


def demo_defaults(name: str, given: dict) -> dict:
    """The defaults of demo ``name`` for a command line whose first parse gave ``given`` (``vars(args)``):
    ``--random_init`` drops the demo's checkpoint and gets its own folder."""
    values = dict(DEMOS[name])
    if given.get("random_init"):
        del values["pretrained"]
        values["out_dir"] += "_random_init"
    return values


def parse_with_demo(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                    name: str | Callable[[dict], str]) -> argparse.Namespace:
    """Parse ``argv``; with ``--demo``, parse it again over the defaults of demo ``name`` (see
    :func:`demo_defaults`; a function of the first parse's flags where they choose it), so flags given
    explicitly still win. The demo implies ``--overwrite`` (where the tool has it) when it writes in its own
    folder, unless ``--resume`` is given: decided on the folder the run will write, so that ``--out_dir``
    naming another folder (also the tool's default one, where real runs live) never deletes anything."""
    args = parser.parse_args(argv)
    if args.demo:
        given = vars(args)
        values = demo_defaults(name(given) if callable(name) else name, given)
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
        if hasattr(args, "overwrite"):
            args.overwrite = args.overwrite or (not getattr(args, "resume", "") and args.out_dir == values["out_dir"])
    return args


def prepare_demo(pretrained: str | None, csv_files: Sequence[str]) -> None:
    """Before anything is written: refuse a missing demo checkpoint in one line saying how to make it,
    then build the demo data where its CSVs are used and missing (as train.py's demo does)."""
    if pretrained == str(DEMO_CHECKPOINT) and not DEMO_CHECKPOINT.is_file():
        raise CheckpointError(f"--demo evaluates the demo's pretraining run, {DEMO_CHECKPOINT}, and there is none "
                              "in this folder: run python train.py --demo first (a minute or two on a CPU)")
    if any(Path(f).parent == DEMO_DATA for f in csv_files):
        make_demo_data(DEMO_DATA)


def next_line(name: str) -> str:
    """The last line of demo ``name``: what to try next."""
    return f"next: {NEXT[name]}"
