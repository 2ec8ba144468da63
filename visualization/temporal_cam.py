"""Temporal CAM: where in the frame a frozen backbone sees the arrow of time (docs/downstream.md: "Temporal CAM").

1. trains a bias-free linear head on the pooled ``high`` map of the frozen backbone to tell each
   training clip (label 0) from its time-reversed copy (label 1), and saves it as ``order_head.pth``;
2. reports the temporal-order accuracy on the test CSV (``order_accuracy.json``);
3. draws, for the first ``--num_videos`` test videos, the CAM of the true class over every frame of
   the forward clip and of the reversed clip, plus one grid per clip (``videos/<k>_<name>/<direction>/``).

    python visualization/temporal_cam.py --pretrained runs/mfo/last.pth \\
        --train_csv data/ucf101/train_split1.csv --test_csv data/ucf101/test_split1.csv --out_dir runs/cam
    python visualization/temporal_cam.py --demo    # the run of python train.py --demo, on its videos
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from datasets import ClipDataset
from datasets.loader import loader_kwargs
from engine.checkpoint import git_commit, load_backbone, save_checkpoint
from engine.errors import exit_on_error
from engine.rundir import OutDirError, RunFiles, check_out_dir
from engine.run import open_outputs, seed_everything
from engine.tracking import Tracker
from evaluation.demo import next_line, parse_with_demo, prepare_demo
from evaluation.loop import train_epoch
from evaluation.protocol import check_clip_and_optimiser
from evaluation.report import epoch_count, epoch_line, write_json
from models import BACKBONES, build_backbone
from visualization.cam import (CLASS_NAMES, OrderClassifier, clip_cam, constant_cam_warning, order_head, to_rgb,
                               with_reversed, write_clip_images)

# what a run writes in --out_dir (--overwrite deletes these first)
CAM_FILES = RunFiles(names=("args.json", "order_head.pth", "order_accuracy.json", "log.jsonl", "tensorboard", "videos"),
                     pattern=None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default=None,
                   help="checkpoint written by train.py whose backbone is visualised "
                        "(default: none; required unless --random_init)")
    p.add_argument("--random_init", action="store_true",
                   help="use a randomly initialised backbone instead: the baseline picture (default: off)")
    p.add_argument("--train_csv", help="CSV 'path,frames,label' whose clips train the order head; required")
    p.add_argument("--test_csv", help="CSV 'path,frames,label' for the order accuracy and the pictures; required")
    p.add_argument("--out_dir", help="folder for the head, the accuracy and the images; required")
    p.add_argument("--overwrite", action="store_true",
                   help="first delete what an earlier run wrote in --out_dir (args.json, order_head.pth, "
                        "order_accuracy.json, log.jsonl, tensorboard/, videos/); without it a run writes over "
                        "those files and adds to the logs (default: off)")
    p.add_argument("--demo", action="store_true",
                   help="draw the pretraining demo's run (runs/demo/last.pth, from python train.py --demo) on the "
                        "demo's videos (data/demo) in a minute or two, in runs/demo_cam, starting again there "
                        "on every run; explicit flags still win; see docs/evaluation.md (default: off)")
    p.add_argument("--arch", default="r3d18", choices=BACKBONES, help="backbone architecture (default: r3d18)")
    p.add_argument("--seq", type=int, default=16,
                   help="frames per clip; at least what the backbone's temporal strides need (1, 5 for s3d) "
                        "(default: 16)")
    p.add_argument("--img_dim", type=int, default=224,
                   help="clip height and width in pixels; where the backbone's last map is 1x1 a frame (r3d18 "
                        "below 33) the CAM is constant and the tool warns (default: 224)")
    p.add_argument("--epoch", "--epochs", dest="epochs", type=int, metavar="N", default=50,
                   help="epochs of head training (default: 50); --epochs is the same flag")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the head, > 0 (default: 1e-3)")
    p.add_argument("--wd", type=float, default=1e-3, help="Adam weight decay of the head, >= 0 (default: 1e-3)")
    p.add_argument("--decay_at", "--lr_decay", dest="lr_decay", type=float, metavar="FRACTION", default=0.6,
                   help="fraction of the epochs after which the lr is multiplied by 0.1 (default: 0.6); --lr_decay, "
                        "kept for old command lines, is the same flag (a fraction here, unlike train.py's epoch)")
    p.add_argument("--train_batch", "--batch_size", dest="batch_size", type=int, metavar="N", default=16,
                   help="training clips per batch, each also seen reversed (default: 16); --batch_size is the same "
                        "flag")
    p.add_argument("--num_videos", type=int, default=8,
                   help="test videos to draw, the first ones of --test_csv (default: 8)")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parse_with_demo(p, argv, "cam")
    missing = [f"--{name}" for name in ("train_csv", "test_csv", "out_dir") if not getattr(args, name)]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)} (or --demo)")
    if args.random_init == bool(args.pretrained):
        p.error("give exactly one of --pretrained CKPT (the backbone to visualise) and --random_init (the baseline)")
    for name in ("seq", "img_dim", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.num_videos < 0 or args.workers < 0:
        p.error("--num_videos and --workers must not be negative")
    if not 0.0 < args.lr_decay <= 1.0:
        p.error(f"--decay_at (--lr_decay) is a fraction of the epochs in (0, 1], got {args.lr_decay}")
    check_clip_and_optimiser(p, arch=args.arch, seq=args.seq, lr=args.lr, wd=args.wd)
    return args


def high_map(backbone: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's high map ``[N,C,t,h,w]`` of ``clips [N,3,T,H,W]``, without gradient."""
    with torch.no_grad():
        return backbone(clips)[2]


def with_reversed_batch(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate ``(clip, class label)`` samples into clips and their reversed copies, with order labels."""
    clips, _ = default_collate(batch)  # [B,3,T,H,W]
    return with_reversed(clips)  # [2B,3,T,H,W], [2B]


def train_head(model: OrderClassifier, loader: DataLoader, *, epochs: int, lr: float, wd: float, lr_decay: float,
               device: torch.device, tracker: Tracker) -> None:
    """Adam on the head only (the backbone stays frozen, in eval mode); lr x0.1 after ``lr_decay`` of the epochs.
    One line per epoch on the terminal, its record in ``log.jsonl`` and TensorBoard."""
    opt = torch.optim.Adam(model.head.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[round(lr_decay * epochs)], gamma=0.1)
    step = 0
    for epoch in range(epochs):
        began = time.perf_counter()
        rate = opt.param_groups[0]["lr"]
        stats, step = train_epoch(model, loader, opt, device, tracker, epoch, step, frozen=model.backbone)
        record = {"epoch": epoch, "loss": stats["loss"], "accuracy": stats["acc"], "lr": rate}
        tracker.scalars(record, step, prefix="head/")
        tracker.epoch(record)
        tracker.print(epoch_line(epoch + 1, epochs, stats["loss"], stats["acc"], time.perf_counter() - began))
        sched.step()


def order_accuracy(model: OrderClassifier, dataset: ClipDataset, *, chunk: int, workers: int, device: torch.device,
                   tracker: Tracker) -> dict:
    """Fraction of test clips (every window of every video, forward and reversed) whose order is told right.

    A video's windows go through the network ``chunk`` at a time (with their reversed copies), so memory
    does not grow with the video's length."""
    model.eval()
    loader = DataLoader(dataset, batch_size=None, num_workers=workers,  # one video (N windows) at a time
                        **loader_kwargs(workers))
    hits = torch.zeros(2, dtype=torch.long)  # right answers per true class (forward, reversed)
    clips_seen = 0
    with torch.no_grad():
        for clips, _ in tracker.progress(loader, desc="order accuracy"):  # VideoClips of N clips [3,T,H,W]
            for part in clips.split(chunk):  # [n,3,T,H,W]
                x, y = with_reversed(part.to(device))  # [2n,...], [2n]
                pred = model(x).argmax(1)  # [2n]
                hits += torch.bincount(y[pred == y], minlength=2).cpu()
            clips_seen += len(clips)
    return {
        "order_accuracy": float(hits.sum()) / (2 * clips_seen),
        "forward_accuracy": float(hits[0]) / clips_seen,
        "reversed_accuracy": float(hits[1]) / clips_seen,
        "clips": clips_seen,
        "videos": len(dataset),
    }


def draw_videos(model: OrderClassifier, dataset: ClipDataset, *, num_videos: int, out_dir: Path,
                device: torch.device) -> list[Path]:
    """Overlays and grids of the first window of the first ``num_videos`` test videos; returns the video folders."""
    folders = []
    for k in range(min(num_videos, len(dataset))):
        first = dataset.video_clips(k, max_windows=1).clips(0, 1)  # [1,3,T,H,W]: only its frames are decoded
        x, y = with_reversed(first.to(device))  # [2,3,T,H,W]: forward, reversed
        cam = clip_cam(model.head.weight.detach(), high_map(model.backbone, x), y, tuple(x.shape[2:]))  # [2,T,H,W]
        folder = out_dir / "videos" / f"{k:03d}_{dataset.videos[k].path.name}"
        for i, direction in enumerate(CLASS_NAMES):
            write_clip_images(to_rgb(x[i]), cam[i].cpu().numpy(), folder / direction)
        folders.append(folder)
    return folders


def cam(args: argparse.Namespace) -> dict:
    """Everything the command line does; returns the accuracy report. Inputs and ``--out_dir`` are checked
    before anything is written (a ``UserError`` otherwise)."""
    out_dir = Path(args.out_dir)
    check_out_dir(out_dir)
    if args.demo:
        prepare_demo(args.pretrained, (args.train_csv, args.test_csv))
    seed_everything(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # every input first (the CSVs before a large checkpoint): a bad one stops the run before --out_dir is made
    train_set = ClipDataset(args.train_csv, mode="train", seq=args.seq, img_dim=args.img_dim)
    test_set = ClipDataset(args.test_csv, mode="test", seq=args.seq, img_dim=args.img_dim, lazy=True)
    backbone = build_backbone(args.arch)
    loaded = load_backbone(backbone, args.pretrained)["summary"] if args.pretrained else None
    backbone.requires_grad_(False)  # frozen; train_epoch keeps it in eval mode: BN keeps its running statistics
    model = OrderClassifier(backbone, order_head(backbone.channels[2])).to(device)

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutDirError(f"--out_dir {out_dir}: cannot create this folder ({e.strerror or e}); "
                          "pick another --out_dir") from e
    tracker = open_outputs(out_dir, flags=vars(args), overwrite=args.overwrite, files=CAM_FILES,
                           headline=f"temporal CAM of {args.pretrained or f'a random {args.arch} (seed {args.seed})'}: "
                           f"order head on {len(train_set)} train videos, {epoch_count(args.epochs)}, batch "
                           f"{args.batch_size}, lr {args.lr:g}; order accuracy on {len(test_set)} test videos, "
                           f"pictures of {min(args.num_videos, len(test_set))} -> {out_dir}",
                           notes=(loaded, constant_cam_warning(args.arch, args.seq, args.img_dim)))

    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        pin_memory=device.type == "cuda", drop_last=False, collate_fn=with_reversed_batch,
                        generator=torch.Generator().manual_seed(args.seed), **loader_kwargs(args.workers))
    train_head(model, loader, epochs=args.epochs, lr=args.lr, wd=args.wd, lr_decay=args.lr_decay, device=device,
               tracker=tracker)
    save_checkpoint({"head": model.head.state_dict(), "arch": args.arch, "args": vars(args)},
                    out_dir / "order_head.pth")

    result = order_accuracy(model, test_set, chunk=args.batch_size, workers=args.workers, device=device,
                            tracker=tracker)
    result.update(arch=args.arch, pretrained=args.pretrained, random_init=args.random_init, git_commit=git_commit())
    report = write_json(result, out_dir / "order_accuracy.json")
    tracker.print(f"temporal-order accuracy on {args.test_csv}: {result['order_accuracy']:.4f} "
                  f"(forward {result['forward_accuracy']:.4f}, reversed {result['reversed_accuracy']:.4f}, "
                  f"{result['clips']} clips of {result['videos']} videos) -> {report}")

    folders = draw_videos(model, test_set, num_videos=args.num_videos, out_dir=out_dir, device=device)
    tracker.print(f"wrote the CAM images of {len(folders)} videos under {out_dir / 'videos'} (a grid.png per clip)")
    if args.demo:
        tracker.print(next_line("cam"))
    tracker.close()
    return result


def main(argv: list[str] | None = None) -> dict:
    """The command line: a bad CSV, checkpoint, frame or ``--out_dir`` ends in one ``error: ...`` line and
    status 1, no traceback, and nothing is written to ``--out_dir``; a Ctrl-C in one line and status 130."""
    args = parse_args(argv)
    with exit_on_error():
        return cam(args)


if __name__ == "__main__":
    main()
