"""Linear probe and nearest-neighbour retrieval of a pretrained backbone on UCF-101 / HMDB-51.

    python eval_linear.py --pretrained runs/mfo/last.pth --train_csv ucf_train.csv --test_csv ucf_test.csv
    python eval_linear.py ... --features     # train the linear layer on cached pooled features
    python eval_linear.py ... --retrieval    # recall@1/5/10/20/50, test videos querying train videos

The backbone is frozen (``eval()`` mode, no gradient); the head is L2-normalise -> BatchNorm1d ->
Linear, trained with SGD (CoCLR's recipe). Accuracy is video-level; see ``engine/downstream.py``.
"""
from __future__ import annotations

import argparse

import torch

from engine.downstream import (add_downstream_args, build_classifier, check_downstream_args, checkpoint_name,
                               device, fit, split_train_val, start_run, test_and_report, video_datasets)
from engine.features import VideoFeatures, cached_features, clip_feature_set
from engine.results import write_json
from engine.retrieval import format_recall_table, one_clip_per_video, recall_at_k, video_means


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_downstream_args(parser, out_dir="runs/linear_probe", lr=0.1, wd=1e-3, epochs=100, schedule=[60, 80],
                        batch_size=64)
    probe = parser.add_argument_group("linear probe")
    probe.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    probe.add_argument("--features", action="store_true",
                       help="extract pooled features once (cached in --out_dir) and train the linear layer on them: "
                            "fast, for sweeping --lr/--wd; no train augmentation")
    probe.add_argument("--retrieval", action="store_true",
                       help="nearest-neighbour retrieval instead of a probe: recall@1/5/10/20/50")
    probe.add_argument("--gallery", choices=("video", "one_clip"), default="video",
                       help="retrieval gallery feature of a train video: mean over all its clips, or one random "
                            "clip as CoCLR (default: video)")
    args = parser.parse_args(argv)
    check_downstream_args(parser, args)
    if args.features and args.retrieval:
        parser.error("--retrieval always uses cached features; drop --features")
    return args


def retrieval(args: argparse.Namespace, features: dict, tracker) -> dict:
    """Test videos query train videos; write results.json; return the recalls."""
    train, test = features["train"], features["test"]
    if args.gallery == "video":
        gallery = video_means(train["feats"], train["counts"])  # [G,C]
    else:
        gallery = one_clip_per_video(train["feats"], train["counts"], torch.Generator().manual_seed(args.seed))
    recalls = recall_at_k(video_means(test["feats"], test["counts"]), test["labels"], gallery, train["labels"])
    tracker.print(f"retrieval of {len(test['labels'])} test videos among {len(train['labels'])} train videos "
                  f"(recall, %):\n{format_recall_table(recalls)}")
    write_json({**recalls, "gallery": args.gallery, "test_videos": len(test["labels"]),
                "train_videos": len(train["labels"]), "checkpoint": checkpoint_name(args), "args": vars(args)},
               f"{args.out_dir}/results.json")
    return recalls


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    tracker, state = start_run(args)
    dev = device()
    model = build_classifier(args, head="bn_linear", tracker=tracker)
    model.backbone.requires_grad_(False)
    if args.retrieval:
        results = retrieval(args, cached_features(model, args, dev, tracker), tracker)
        tracker.close()
        return results

    if args.features:  # the head alone, on cached features of the deterministic test clips
        features = cached_features(model, args, dev, tracker)
        train_idx, val_idx = split_train_val(len(features["train"]["labels"]), args.val_fraction, args.seed)
        net, frozen = model.head, None
        train_set = clip_feature_set(features["train"], train_idx)
        val_set = VideoFeatures(features["train"], val_idx) if val_idx else None
        test_set = VideoFeatures(features["test"])
    else:
        net, frozen = model, model.backbone
        train_set, val_set, test_set = video_datasets(args)

    optimizer = torch.optim.SGD(model.head.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.schedule, gamma=0.1)
    chosen = fit(args, net, train_set, val_set, optimizer, scheduler, tracker, state, dev, frozen=frozen)
    results = test_and_report(args, net, test_set, dev, tracker, {"protocol": "linear probe", **chosen})
    tracker.close()
    return results


if __name__ == "__main__":
    main()
