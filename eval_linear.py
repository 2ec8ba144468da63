"""Linear probe and nearest-neighbour retrieval of a pretrained backbone on UCF-101 / HMDB-51.

    python eval_linear.py --pretrained runs/mfo/last.pth --train_csv ucf_train.csv --test_csv ucf_test.csv
    python eval_linear.py ... --features     # train the linear layer on cached pooled features
    python eval_linear.py ... --retrieval    # recall@1/5/10/20/50, test videos querying train videos
    python eval_linear.py --demo [--retrieval]   # the run of python train.py --demo, on its labelled videos

The backbone is frozen (``eval()`` mode, no gradient); the head is L2-normalise -> BatchNorm1d ->
Linear, trained with SGD (CoCLR's recipe). Accuracy is video-level; see ``evaluation/protocol.py``,
docs/evaluation.md and docs/downstream.md, "Downstream evaluation".
"""
from __future__ import annotations

import argparse

import torch

from engine.errors import exit_on_error
from engine.run import seed_everything
from evaluation.data import read_inputs, video_datasets
from evaluation.demo import next_line, parse_with_demo, prepare_demo
from evaluation.features import ClipFeatureSamples, VideoFeatures, cached_features
from evaluation.loop import build_classifier, downstream_run, train_and_test
from evaluation.protocol import Protocol, add_downstream_args, check_downstream_args
from evaluation.report import run_line
from evaluation.retrieval import retrieval_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_downstream_args(parser, out_dir="runs/linear_probe", lr=0.1, wd=1e-3, epochs=100, schedule=[60, 80],
                        batch_size=64, demo_out_dir="runs/demo_linear (runs/demo_retrieval with --retrieval)")
    probe = parser.add_argument_group("linear probe")
    probe.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    probe.add_argument("--features", action="store_true",
                       help="extract pooled features once (cached in --out_dir) and train the linear layer on them: "
                            "fast, for sweeping --lr/--wd; no train augmentation; each epoch draws one random "
                            "window per train video, so long and short videos weigh the same")
    probe.add_argument("--retrieval", action="store_true",
                       help="nearest-neighbour retrieval instead of a probe: recall@1/5/10/20/50")
    probe.add_argument("--gallery", choices=("video", "one_clip"), default="video",
                       help="retrieval gallery feature of a train video: mean over all its clips, or one random "
                            "clip as CoCLR (default: video)")
    args = parse_with_demo(parser, argv, lambda given: "retrieval" if given["retrieval"] else "linear")
    check_downstream_args(parser, Protocol.from_flags(vars(args)))
    if args.features and args.retrieval:
        parser.error("--retrieval always uses cached features; drop --features")
    if args.retrieval and args.resume:
        parser.error("--retrieval trains nothing, so there is nothing to resume; drop --resume")
    if args.momentum < 0:
        parser.error(f"--momentum must be >= 0, got {args.momentum:g}")
    return args


def run(args: argparse.Namespace) -> dict:
    """The probe or retrieval of ``args``; every input is read and checked before ``--out_dir`` is written."""
    if args.demo:
        prepare_demo(args.pretrained, (args.train_csv, args.test_csv))
    cfg, train_idx, val_idx, test_videos = read_inputs(Protocol.from_flags(vars(args)))
    seed_everything(cfg.seed)
    model, loaded = build_classifier(cfg, head="bn_linear")
    model.backbone.requires_grad_(False)
    what = ("nearest-neighbour retrieval by the features" if args.retrieval else
            "linear probe on cached features" if args.features else "linear probe")
    headline = run_line(what, cfg, train=len(train_idx), held_out=len(val_idx), test=test_videos,
                        trains=not args.retrieval)
    with downstream_run(cfg, notes=(loaded,), headline=headline) as run:
        if run.done is not None:
            return run.done
        if args.retrieval:
            recalls = retrieval_report(cfg, cached_features(model, cfg, run.device, run.tracker, stop=run.stop),
                                       run.tracker, args.gallery)
            if args.demo:
                run.tracker.print(next_line("retrieval"))
            return recalls
        if args.features:  # the head alone, on cached features of the deterministic test clips
            features = cached_features(model, cfg, run.device, run.tracker, stop=run.stop)
            net, frozen = model.head, None
            sets = (ClipFeatureSamples(features["train"], train_idx),
                    VideoFeatures(features["train"], val_idx) if val_idx else None, VideoFeatures(features["test"]))
        else:
            net, frozen = model, model.backbone
            sets = video_datasets(cfg, train_idx, val_idx)
        optimizer = torch.optim.SGD(model.head.parameters(), lr=cfg.lr, momentum=args.momentum, weight_decay=cfg.wd)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.schedule), gamma=0.1)
        results = train_and_test(cfg, run, net, sets, optimizer, scheduler, protocol="linear probe", frozen=frozen)
        if args.demo:
            run.tracker.print(next_line("linear"))
        return results


def main(argv: list[str] | None = None) -> dict:
    """The command line: a user's mistake (a bad CSV, checkpoint, frame, output folder, resume) ends in one
    ``error: ...`` line and status 1; SIGINT / SIGTERM stop at a step (see ``evaluation.loop.fit``)."""
    args = parse_args(argv)  # argparse reports its own errors
    with exit_on_error():
        return run(args)


if __name__ == "__main__":
    main()
