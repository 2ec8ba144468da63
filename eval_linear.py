"""Linear probe and nearest-neighbour retrieval of a pretrained backbone on UCF-101 / HMDB-51.

    python eval_linear.py --pretrained runs/mfo/last.pth --train_csv ucf_train.csv --test_csv ucf_test.csv
    python eval_linear.py ... --features     # train the linear layer on cached pooled features
    python eval_linear.py ... --retrieval    # recall@1/5/10/20/50, test videos querying train videos

The backbone is frozen (``eval()`` mode, no gradient); the head is L2-normalise -> BatchNorm1d ->
Linear, trained with SGD (CoCLR's recipe). Accuracy is video-level; see ``evaluation/protocol.py``.
"""
from __future__ import annotations

import argparse

import torch

from evaluation.features import ClipFeatureSamples, VideoFeatures, cached_features
from evaluation.protocol import (Protocol, add_downstream_args, build_classifier, check_downstream_args,
                                 exit_on_user_error, fit, read_inputs, seed_everything, start_run, test_and_report, video_datasets)
from evaluation.report import write_json
from evaluation.retrieval import format_recall_table, one_clip_per_video, recall_at_k, video_means


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_downstream_args(parser, out_dir="runs/linear_probe", lr=0.1, wd=1e-3, epochs=100, schedule=[60, 80],
                        batch_size=64)
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
    args = parser.parse_args(argv)
    check_downstream_args(parser, Protocol.from_flags(vars(args)))
    if args.features and args.retrieval:
        parser.error("--retrieval always uses cached features; drop --features")
    return args


def retrieval(cfg: Protocol, features: dict, tracker, gallery_kind: str) -> dict:
    """Test videos query train videos; write results.json; return the recalls."""
    train, test = features["train"], features["test"]
    if gallery_kind == "video":
        gallery = video_means(train["feats"], train["counts"])  # [G,C]
    else:
        gallery = one_clip_per_video(train["feats"], train["counts"], torch.Generator().manual_seed(cfg.seed))
    recalls = recall_at_k(video_means(test["feats"], test["counts"]), test["labels"], gallery, train["labels"])
    tracker.print(f"retrieval of {len(test['labels'])} test videos among {len(train['labels'])} train videos "
                  f"(recall, %):\n{format_recall_table(recalls)}")
    write_json({**recalls, "gallery": gallery_kind, "test_videos": len(test["labels"]),
                "train_videos": len(train["labels"]), "checkpoint": cfg.checkpoint_name, "args": dict(cfg.flags)},
               f"{cfg.out_dir}/results.json")
    return recalls


def run(args: argparse.Namespace) -> dict:
    """The probe or retrieval of ``args``; every input is read and checked before ``--out_dir`` is written."""
    cfg, train_idx, val_idx = read_inputs(Protocol.from_flags(vars(args)))
    seed_everything(cfg.seed)
    model, loaded = build_classifier(cfg, head="bn_linear")
    model.backbone.requires_grad_(False)
    tracker, state, dev = start_run(cfg, notes=(loaded,))
    if args.retrieval:
        results = retrieval(cfg, cached_features(model, cfg, dev, tracker), tracker, args.gallery)
        tracker.close()
        return results

    if args.features:  # the head alone, on cached features of the deterministic test clips
        features = cached_features(model, cfg, dev, tracker)
        net, frozen = model.head, None
        train_set = ClipFeatureSamples(features["train"], train_idx)
        val_set = VideoFeatures(features["train"], val_idx) if val_idx else None
        test_set = VideoFeatures(features["test"])
    else:
        net, frozen = model, model.backbone
        train_set, val_set, test_set = video_datasets(cfg, train_idx, val_idx)

    optimizer = torch.optim.SGD(model.head.parameters(), lr=cfg.lr, momentum=args.momentum, weight_decay=cfg.wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.schedule), gamma=0.1)
    chosen = fit(cfg, net, train_set, val_set, optimizer, scheduler, tracker, state, dev, frozen=frozen)
    results = test_and_report(cfg, net, test_set, dev, tracker, {"protocol": "linear probe", **chosen})
    tracker.close()
    return results


def main(argv: list[str] | None = None) -> dict:
    """The command line: a bad CSV, checkpoint or frame ends in one ``error: ...`` line and status 1."""
    args = parse_args(argv)  # argparse reports its own errors
    return exit_on_user_error(lambda: run(args))


if __name__ == "__main__":
    main()
