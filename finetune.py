"""Fine-tune a pretrained backbone end to end on UCF-101 / HMDB-51 (CoCLR's protocol).

    python finetune.py --pretrained runs/mfo/last.pth --train_csv ucf_train.csv --test_csv ucf_test.csv
    python finetune.py --demo    # the run of python train.py --demo, on its labelled videos

The whole network is trained with Adam; the head is Dropout(0.9) -> Linear and the backbone's
learning rate is a tenth of the head's. Accuracy is video-level; see ``evaluation/protocol.py``,
docs/evaluation.md and docs/downstream.md, "Downstream evaluation".
"""
from __future__ import annotations

import argparse

import torch

from engine.errors import exit_on_error
from engine.run import seed_everything
from evaluation.data import read_inputs, video_datasets
from evaluation.demo import next_line, parse_with_demo, prepare_demo
from evaluation.loop import build_classifier, downstream_run, train_and_test
from evaluation.protocol import Protocol, add_downstream_args, check_downstream_args
from evaluation.report import run_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_downstream_args(parser, out_dir="runs/finetune", lr=1e-3, wd=1e-3, epochs=500, schedule=[400, 450],
                        batch_size=32, demo_out_dir="runs/demo_finetune")
    tune = parser.add_argument_group("fine-tuning")
    tune.add_argument("--dropout", type=float, default=0.9, help="dropout before the linear layer (default: 0.9)")
    tune.add_argument("--backbone_lr_scale", type=float, default=0.1,
                      help="backbone learning rate as a fraction of --lr (default: 0.1)")
    args = parse_with_demo(parser, argv, "finetune")
    check_downstream_args(parser, Protocol.from_flags(vars(args)))
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if not args.backbone_lr_scale >= 0:
        parser.error(f"--backbone_lr_scale must be >= 0, got {args.backbone_lr_scale:g}")
    return args


def run(args: argparse.Namespace) -> dict:
    """The fine-tuning of ``args``; every input is read and checked before ``--out_dir`` is written."""
    if args.demo:
        prepare_demo(args.pretrained, (args.train_csv, args.test_csv))
    cfg, train_idx, val_idx, test_videos = read_inputs(Protocol.from_flags(vars(args)))
    seed_everything(cfg.seed)
    model, loaded = build_classifier(cfg, head="linear", dropout=args.dropout)
    sets = video_datasets(cfg, train_idx, val_idx)
    headline = run_line("fine-tuning", cfg, train=len(train_idx), held_out=len(val_idx), test=test_videos)
    with downstream_run(cfg, notes=(loaded,), headline=headline) as run:
        if run.done is not None:
            return run.done
        optimizer = torch.optim.Adam([
            {"params": model.backbone.parameters(), "lr": cfg.lr * args.backbone_lr_scale},
            {"params": model.head.parameters(), "lr": cfg.lr},
        ], weight_decay=cfg.wd)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.schedule), gamma=0.1)
        results = train_and_test(cfg, run, model, sets, optimizer, scheduler, protocol="fine-tuning")
        if args.demo:
            run.tracker.print(next_line("finetune"))
        return results


def main(argv: list[str] | None = None) -> dict:
    """The command line: a user's mistake (a bad CSV, checkpoint, frame, output folder, resume) ends in one
    ``error: ...`` line and status 1; SIGINT / SIGTERM stop at a step (see ``evaluation.loop.fit``)."""
    args = parse_args(argv)  # argparse reports its own errors
    with exit_on_error():
        return run(args)


if __name__ == "__main__":
    main()
