"""Pooled backbone features of every video of a CSV, for use outside mfo.

    python scripts/extract_features.py --pretrained runs/mfo/last.pth --csv data/ucf101/ucf101_test_split1.csv \\
        --out ucf_test_features.pt [--overwrite] [--per_clip] [--seq 16 --img_dim 112 --arch r3d18 --views center]

Each video is covered by half-overlapping windows of ``--seq`` frames, times ``--views`` crops
(the deterministic test clips of the evaluation); every clip goes through the frozen backbone
(eval mode) and its ``high`` map is average-pooled over time and space.

An existing ``--out`` is replaced only with ``--overwrite``, and never when it is the ``--pretrained``
checkpoint (also through a link).

Output: one file written with ``torch.save`` (load it with ``torch.load(path, weights_only=True)``)
holding a dict:

    paths          list[str], V video paths as resolved from the CSV, in CSV order
    labels         int64 [V], the CSV's labels; -1 for every video of a path,frames CSV (no labels)
    features       float32 [V, C], the mean over each video's clips of their pooled features
    clip_features  float32 [M, C], every clip's pooled feature (only with --per_clip):
                   video 0's clips first (window-major, then view), then video 1's, ...
    clip_counts    int64 [V], clips per video (only with --per_clip; they sum to M)
    arch, seq, img_dim, views, checkpoint   how the features were made

C is the backbone's width (512 for r3d18). Features are not normalised.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from datasets import read_csv
from engine.checkpoint import load_backbone, save_checkpoint
from engine.errors import exit_on_error
from engine.interrupt import GracefulStop
from engine.rundir import OutDirError, check_out_dir
from engine.tracking import Tracker
from evaluation.features import video_set_features
from evaluation.loop import device
from evaluation.protocol import VIEWS, Protocol
from models import BACKBONES, VideoClassifier, min_seq


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", required=True, metavar="CKPT",
                   help="checkpoint whose backbone extracts the features (a train.py checkpoint, or any state "
                        "dict with backbone.* keys)")
    p.add_argument("--csv", required=True,
                   help="CSV of videos: path,frames,label or, for unlabelled videos, path,frames (no header)")
    p.add_argument("--out", required=True, help="output file (.pt), written atomically; an existing file needs "
                                                "--overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (never the --pretrained checkpoint) (default: off)")
    p.add_argument("--arch", choices=BACKBONES, default="r3d18", help="backbone (default: r3d18)")
    p.add_argument("--seq", type=int, default=16,
                   help="frames per clip; at least what the backbone's temporal strides need (1, 5 for s3d) "
                        "(default: 16)")
    p.add_argument("--img_dim", type=int, default=112, help="clip height and width in pixels (default: 112)")
    p.add_argument("--views", choices=VIEWS, default="center",
                   help="spatial crops per window: centre, 5 or 10 (with flips) (default: center)")
    p.add_argument("--per_clip", action="store_true", help="also store every clip's feature (default: off)")
    p.add_argument("--batch_size", type=int, default=64, help="clips per forward pass (default: 64)")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes (default: 4)")
    args = p.parse_args(argv)
    for name in ("seq", "img_dim", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if args.seq < min_seq(args.arch):
        p.error(f"--seq {args.seq}: {args.arch} needs at least {min_seq(args.arch)} frames per clip (its temporal "
                "strides leave no time step below that)")
    return args


def extract(args: argparse.Namespace, stop: GracefulStop | None = None) -> dict:
    """The output dict (see the module docstring); nothing is written. ``stop``: see
    ``evaluation.features.extract_features``."""
    videos = read_csv(args.csv)
    labelled = videos[0].label is not None  # every row has the first row's columns
    cfg = Protocol(train_csv=args.csv, test_csv=args.csv, out_dir=str(Path(args.out).parent), arch=args.arch,
                   num_classes=max(v.label for v in videos) + 1 if labelled else 1, seq=args.seq,
                   img_dim=args.img_dim, test_views=args.views, workers=args.workers, batch_size=args.batch_size)
    model = VideoClassifier(args.arch, cfg.classes)
    tracker = Tracker(cfg.out_dir, tensorboard=False)  # progress bars only
    tracker.print(load_backbone(model.backbone, args.pretrained)["summary"])
    dev = device()
    model.to(dev)
    out = video_set_features(model, args.csv, cfg, dev, tracker, desc="features", labelled=labelled, stop=stop)
    feats, counts = out["feats"], out["counts"]  # [M,C], [V]
    result = {
        "paths": [str(v.path) for v in videos], "labels": out["labels"],
        "features": torch.stack([chunk.mean(0) for chunk in feats.split(counts.tolist())]),  # [V,C]
        "arch": args.arch, "seq": args.seq, "img_dim": args.img_dim, "views": args.views,
        "checkpoint": str(args.pretrained),
    }
    if args.per_clip:
        result.update(clip_features=feats, clip_counts=counts)
    return result


def check_out(out: Path, pretrained: str, overwrite: bool) -> None:
    """Refuse, before any work, an ``out`` that is the ``pretrained`` file (the same file also through a
    symbolic or hard link; even with ``overwrite``) or, without ``overwrite``, one that exists."""
    if out.exists() and Path(pretrained).exists() and os.path.samefile(out, pretrained):
        raise OutDirError(f"--out {out} is the --pretrained checkpoint {pretrained}: writing the features there "
                          "would destroy it; pick another --out")
    if out.exists() and not overwrite:
        raise OutDirError(f"--out {out} already exists; pass --overwrite to replace it, or pick another --out")


def main(argv: list[str] | None = None) -> int:
    """The command line: a bad checkpoint, CSV, frame or ``--out`` (also an existing one, see
    :func:`check_out`) ends in one ``error: ...`` line and status 1, and nothing is written; SIGINT / SIGTERM
    stop after the current batch of videos (status 130 / 143)."""
    args = parse_args(argv)
    with exit_on_error():
        if Path(args.out).is_dir():
            raise OutDirError(f"--out {args.out} is a folder; give the file to write, "
                              f"e.g. {Path(args.out) / 'features.pt'}")
        check_out_dir(Path(args.out).parent, flag="--out's folder")
        check_out(Path(args.out), args.pretrained, args.overwrite)
        with GracefulStop() as stop:
            result = extract(args, stop)
        save_checkpoint(result, args.out, what="features", flag="--out")
    v, c = result["features"].shape
    print(f"features of {v} videos ({c} wide{', per clip too' if args.per_clip else ''}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
