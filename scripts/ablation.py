"""Which MFO terms make the representation better? A CPU-scale ablation on the motion benchmark.

    python scripts/ablation.py --out runs/ablation [--seeds 3] [--epoch 15] [--variants random inst full]
    python scripts/ablation.py --out runs/gpu --data DATA --img_dim 112 --train_batch 64 --minutes 2.5 --epoch 100

For each variant and seed (a "cell"), pretrains r3d18 on the benchmark's unlabelled videos with
``train.py`` for a fixed budget (the same flags for every variant but ``--terms``), then scores the
backbone on the labelled train/test videos. The budget is ``--epoch`` epochs, or with ``--minutes M``
M minutes of wall clock a cell: train.py then runs as a subprocess writing an epoch file after every
epoch, is stopped (SIGTERM, then SIGKILL after 30 s) when the time is spent, and the newest finished
epoch is scored; the steps it had done are recorded (``steps``). Metrics:

- ``probe``: the linear probe on cached pooled features (``eval_linear.py --features``: SGD on
  L2-normalised, batch-normalised features), top-1;
- ``probe_lr``: the standardised logistic-regression probe of the monitor
  (``evaluation.monitor.linear_probe_top1``) on one centred clip per video, top-1;
- ``knn``: the weighted kNN classifier on one centred clip per video (``evaluation.monitor``), top-1;
- ``knn_std``: the same kNN on features standardised with the train videos' statistics;
- ``order``: the temporal-order accuracy of ``visualization/temporal_cam.py``'s order head;
- ``erank``: the effective rank of the pooled features (collapse shows as a handful);
- ``knn_mid``, ``knn_low``: the kNN classifier on the pooled layer3 and layer2 maps instead of
  layer4's (a diagnostic: where in the backbone, if anywhere, the classes are told apart);
- ``vid``, ``vid_static``: how often a train video's first ``--seq`` frames find its own last
  ``--seq`` frames among all train videos (``evaluation.monitor.video_identity``); ``vid_static``
  uses one frozen frame per clip, so only appearance can do it (a diagnostic: can the
  instance-level terms be solved by appearance, without motion?). Left out ("–") when a video has
  fewer than ``2 * --seq`` frames (the two clips would overlap).

Variants: ``random`` (no pretraining: the baseline), ``inst``, ``inst_motion``,
``inst_motion_align``, ``inst_motion_align_proto``, ``full`` (all terms, graph from ``--split``).

Scoring runs on CUDA when there is a GPU; the monitor's and the same-video forwards take
``--train_batch`` clips at a time (the probe's SGD batch, 64, and the order head's, 16, are fixed).

Writes ``OUT/ablation.md`` (mean ± std over seeds per variant and metric, with the exact flags)
and ``OUT/ablation.png`` (grouped bars). Every cell's scores go to ``OUT/cells/<variant>_s<seed>/result.json``;
a finished cell is never recomputed and an interrupted pretraining resumes (``--resume auto``; with
``--minutes`` it starts again, as a time budget cannot be resumed, unless its budget was spent:
``pretrain/budget.json`` then names the epoch to score), so the command can be re-run until the grid
is complete. Cells run seed by seed (every variant's seed 0
first), and the table and plot are rewritten after each cell, so a grid stopped early still
compares every variant. Checkpoints are removed once a cell is scored
(``--keep_checkpoints`` keeps them; a cell scored before a metric was added gets it on the next run
while its backbone can be rebuilt: random init, or a kept checkpoint; it shows "–" otherwise).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import eval_linear
import train
from datasets import read_csv
from datasets.motion_demo import make_motion_data
from engine.checkpoint import load_backbone
from engine.errors import UserError, exit_on_error
from engine.files import atomic_write
from engine.rundir import TEMPORARY
from evaluation.monitor import KnnMonitor, video_identity
from evaluation.report import write_json
from models import build_backbone
from visualization import temporal_cam

VARIANTS = {
    "random": None,
    "inst": ["inst"],
    "inst_motion": ["inst", "motion"],
    "inst_motion_align": ["inst", "motion", "align"],
    "inst_motion_align_proto": ["inst", "motion", "align", "proto"],
    "full": ["inst", "motion", "align", "proto", "graph"],
}
METRICS = ("probe", "probe_lr", "knn", "knn_std", "order", "erank", "knn_mid", "knn_low", "vid", "vid_static")
MONITOR_METRICS = ("probe_lr", "knn", "knn_std", "erank", "knn_mid", "knn_low")  # from one KnnMonitor call
IDENTITY_METRICS = ("vid", "vid_static")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TRAIN = Path(__file__).resolve().parents[1] / "train.py"
STOP_GRACE_S = 30  # seconds train.py gets to end after SIGTERM before SIGKILL


class AblationError(UserError):
    """A grid that cannot go on (a pretraining that failed or finished no epoch): one line for the user."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the cells, ablation.md and ablation.png")
    p.add_argument("--data", type=Path, default=None,
                   help="motion benchmark folder (default: OUT/data, built with --data_seed if missing)")
    p.add_argument("--data_seed", type=int, default=0, help="seed of the benchmark when it is built (default: 0)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT",
                   help=f"variants to run, of: {' '.join(VARIANTS)} (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant: 0 .. N-1 (default: 3)")
    g = p.add_argument_group("pretraining budget (the same for every variant)")
    g.add_argument("--epoch", type=int, default=15,
                   help="pretraining epochs; with --minutes the most it may run, and the lr decay epoch (default: 15)")
    g.add_argument("--minutes", type=float, default=0.0,
                   help="pretraining time budget of a cell in minutes of wall clock, train.py's start-up included: "
                        "pretrain until it is spent (or --epoch epochs are done), then score the newest finished "
                        "epoch (default: 0, no budget: --epoch epochs)")
    g.add_argument("--train_batch", type=int, default=16,
                   help="videos per pretraining batch, and clips per forward pass of the monitor and same-video "
                        "scores (default: 16)")
    g.add_argument("--seq", type=int, default=16, help="frames per clip (default: 16)")
    g.add_argument("--img_dim", type=int, default=32, help="crop size (default: 32)")
    g.add_argument("--cluster", type=int, default=32, help="prototypes (default: 32)")
    g.add_argument("--split", type=int, default=5, help="epoch from which the graph term is on (default: 5)")
    g.add_argument("--queue_start", type=int, default=3, help="epoch from which the whole bank is used (default: 3)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3, the paper's)")
    g.add_argument("--queue_size", type=int, default=1024, help="prototype bank rows (default: 1024, the paper's)")
    g.add_argument("--train_args", default="",
                   help="more train.py flags for every variant, as one string: --train_args='--gray_p 0.2' (default: none)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--probe_epochs", type=int, default=100, help="linear-probe epochs on cached features (default: 100)")
    g.add_argument("--order_epochs", type=int, default=10, help="order-head epochs (default: 10)")
    g.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0)")
    g.add_argument("--keep_checkpoints", action="store_true", help="keep each cell's pretraining checkpoints")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.epoch < 1 or args.train_batch < 1:
        p.error("--seeds, --epoch and --train_batch must be at least 1")
    if not args.minutes >= 0 or math.isinf(args.minutes):
        p.error(f"--minutes {args.minutes}: must be a finite number of minutes, 0 or more")
    return args


def pretrain_flags(args: argparse.Namespace, terms: list[str], seed: int, out_dir: Path, data: Path) -> list[str]:
    """The train.py command line of one cell."""
    return [
        "--csv_file", str(data / "pretrain.csv"), "--out_dir", str(out_dir), "--seed", str(seed),
        "--terms", *terms, "--seq", str(args.seq), "--img_dim", str(args.img_dim),
        "--train_batch", str(args.train_batch), "--cluster", str(args.cluster), "--epoch", str(args.epoch),
        "--split", str(args.split), "--queue_start", str(args.queue_start), "--lr_decay", str(args.epoch),
        "--lr", str(args.lr), "--queue_size", str(args.queue_size), "--save_every", "0",
        "--keep_epochs", "1" if args.minutes else "0",
        "--workers", str(args.workers),
        *shlex.split(args.train_args),
    ]


def shared_flags(args: argparse.Namespace, ckpt: Path | None, seed: int, data: Path, out_dir: Path) -> list[str]:
    init = ["--pretrained", str(ckpt)] if ckpt else ["--random_init"]
    return [*init, "--train_csv", str(data / "train.csv"), "--test_csv", str(data / "test.csv"),
            "--seq", str(args.seq), "--img_dim", str(args.img_dim), "--workers", str(args.workers),
            "--seed", str(seed), "--out_dir", str(out_dir)]


def score(args: argparse.Namespace, ckpt: Path | None, seed: int, data: Path, cell: Path) -> dict[str, float]:
    """The metrics of one backbone (``ckpt`` None: a random initialisation seeded by ``seed``)."""
    classes = len((data / "classes.txt").read_text().split())
    # --overwrite: a cell scored again (its scoring was interrupted) probes again, from the cached features
    probe = eval_linear.main([*shared_flags(args, ckpt, seed, data, cell / "probe"), "--features",
                              "--num_classes", str(classes), "--epoch", str(args.probe_epochs), "--schedule",
                              "--train_batch", "64", "--overwrite"])
    order = temporal_cam.main([*shared_flags(args, ckpt, seed, data, cell / "order"), "--epoch",
                               str(args.order_epochs), "--train_batch", "16", "--num_videos", "0"])
    backbone = load(ckpt, seed)
    return {"probe": probe["top1"], "order": order["order_accuracy"], **monitor_scores(args, backbone, data),
            **identity(args, backbone, data)}


def monitor_scores(args: argparse.Namespace, backbone: torch.nn.Module, data: Path) -> dict[str, float]:
    """The metrics of ``MONITOR_METRICS`` from one :class:`KnnMonitor` call on the labelled videos."""
    monitor = KnnMonitor(str(data / "train.csv"), str(data / "test.csv"), seq=args.seq, img_dim=args.img_dim,
                         batch_size=args.train_batch, workers=args.workers, levels=("low", "mid"))
    seen = monitor(backbone, DEVICE)
    return {"probe_lr": seen["probe_top1"], "knn": seen["knn_top1"], "knn_std": seen["knn_top1_std"],
            "erank": seen["erank"], "knn_mid": seen["knn_top1_mid"], "knn_low": seen["knn_top1_low"]}


def load(ckpt: Path | None, seed: int) -> torch.nn.Module:
    """The backbone of a cell: pretrained from ``ckpt``, or the random initialisation seeded by ``seed``
    (the one eval_linear.py and temporal_cam.py draw)."""
    torch.manual_seed(seed)
    backbone = build_backbone("r3d18")
    if ckpt:
        load_backbone(backbone, ckpt)
    return backbone.to(DEVICE)


def identity(args: argparse.Namespace, backbone: torch.nn.Module, data: Path) -> dict[str, float]:
    """``vid`` and ``vid_static`` (see the module docstring) on the labelled train videos; none when
    the videos are too short for two disjoint clips."""
    common = dict(seq=args.seq, img_dim=args.img_dim, batch_size=args.train_batch, workers=args.workers,
                  device=DEVICE)
    try:
        return {"vid": video_identity(backbone, data / "train.csv", **common),
                "vid_static": video_identity(backbone, data / "train.csv", static=True, **common)}
    except ValueError as error:
        print(f"[ablation] no same-video scores: {error}", flush=True)
        return {}


def epoch_files(folder: Path) -> list[Path]:
    """The complete ``epoch_NNNN.pth`` of ``folder``, oldest first (temporary files of a write are hidden:
    ``.epoch_NNNN.pth.<random>.tmp``)."""
    return sorted(folder.glob("epoch_[0-9]*.pth"))


def keep_newest_epoch(folder: Path) -> Path | None:
    """Delete every epoch file of ``folder`` but the newest, which is returned (None if there is none)."""
    files = epoch_files(folder)
    for path in files[:-1]:
        path.unlink(missing_ok=True)
    return files[-1] if files else None


def stop(process: subprocess.Popen) -> None:
    """End ``process`` and its children (its own session): SIGTERM, then SIGKILL after ``STOP_GRACE_S``."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # already gone
            pass
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pretrain_for_minutes(args: argparse.Namespace, flags: list[str], out_dir: Path, name: str) -> tuple[Path, dict]:
    """Run ``train.py flags`` in a subprocess for at most ``args.minutes``; return the newest finished epoch file
    and ``budget.json``'s record (``checkpoint``, ``steps``, ``epochs``, ``seconds``, ``stopped_by_budget``).

    A spent budget is recorded in ``out_dir/budget.json`` and reused on a re-run; an unfinished one (the
    ablation was interrupted) starts again (``--overwrite``). Older epoch files are deleted as newer ones
    appear. Raises :class:`AblationError` if train.py fails or finishes no epoch in the budget.
    """
    record_file = out_dir / "budget.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if (out_dir / record["checkpoint"]).is_file():
            return out_dir / record["checkpoint"], record
    command = [sys.executable, str(TRAIN), *flags, "--overwrite"]
    out_dir.mkdir(parents=True, exist_ok=True)  # train.py may be stopped before it makes it
    print(f"[ablation] {name}: pretraining for {args.minutes:g} min", flush=True)
    tic = time.monotonic()
    deadline = tic + 60 * args.minutes
    process = subprocess.Popen(command, start_new_session=True)  # its own group: the loader workers end with it
    stopped = False
    try:
        while True:
            try:
                process.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                keep_newest_epoch(out_dir)  # an epoch file is never half-written: older ones can go
                if time.monotonic() >= deadline:
                    stopped = True
                    stop(process)
                    break
    finally:
        if process.poll() is None:  # interrupted while waiting (Ctrl-C, an error): leave nothing running
            stop(process)
    seconds = time.monotonic() - tic
    if stopped:  # the leading newline ends train.py's progress bar line
        print(f"\n[ablation] {name}: {args.minutes:g} min spent, train.py stopped after {seconds:.0f} s", flush=True)
    for path in out_dir.iterdir():  # a write cut by the stop leaves its temporary file; nobody writes now
        if TEMPORARY.match(path.name):
            path.unlink()
    if not stopped and process.returncode != 0:
        raise AblationError(f"{name}: train.py failed (exit status {process.returncode}; its output is above): "
                            f"{shlex.join(command)}")
    ckpt = keep_newest_epoch(out_dir)
    if ckpt is None:
        raise AblationError(f"{name}: no pretraining epoch finished within --minutes {args.minutes:g} "
                            f"({seconds:.0f} s of train.py, start-up included): give more minutes, or a "
                            "benchmark with fewer videos per epoch")
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    record = {"checkpoint": ckpt.name, "steps": state["global_step"], "epochs": state["epoch"],
              "seconds": seconds, "stopped_by_budget": stopped}
    write_json(record, record_file)
    return ckpt, record


def cell_checkpoint(cell: Path) -> Path:
    """Where a pretrained cell's backbone is: the epoch file a time budget chose, else ``last.pth``."""
    record_file = cell / "pretrain" / "budget.json"
    if record_file.is_file():
        return cell / "pretrain" / json.loads(record_file.read_text())["checkpoint"]
    return cell / "pretrain" / "last.pth"


def run_cell(args: argparse.Namespace, variant: str, seed: int, data: Path) -> dict:
    """Pretrain (unless ``random``) and score one cell; reuse its result.json when present."""
    cell = args.out / "cells" / f"{variant}_s{seed}"
    result_file = cell / "result.json"
    terms = VARIANTS[variant]
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        ckpt = None if terms is None else cell_checkpoint(cell)
        missing = set(MONITOR_METRICS + IDENTITY_METRICS) - set(result)
        if missing and (ckpt is None or ckpt.is_file()):  # scored before these metrics existed
            backbone = load(ckpt, seed)
            found = {}
            if missing & set(MONITOR_METRICS):
                found.update(monitor_scores(args, backbone, data))
            if missing & set(IDENTITY_METRICS):
                found.update(identity(args, backbone, data))
            result.update({k: v for k, v in found.items() if k not in result})
            write_json(result, result_file)
        return result
    tic = time.perf_counter()
    ckpt, flags, budget = None, [], {}
    if terms is not None:
        flags = pretrain_flags(args, terms, seed, cell / "pretrain", data)
        if args.minutes:
            ckpt, budget = pretrain_for_minutes(args, flags, cell / "pretrain", f"cell {variant}_s{seed}")
        else:
            ckpt = cell / "pretrain" / "last.pth"
            state = torch.load(ckpt, weights_only=True, map_location="cpu") if ckpt.is_file() else None
            if state is None or state["epoch"] < args.epoch:  # not finished: start or continue
                train.main([*flags, "--resume", "auto"])
    pretrain_seconds = budget.get("seconds", time.perf_counter() - tic)
    steps = budget.get("steps", 0 if ckpt is None else torch.load(ckpt, weights_only=True,
                                                                  map_location="cpu")["global_step"])
    result = {"variant": variant, "seed": seed, "train_flags": flags, "pretrain_seconds": pretrain_seconds,
              "steps": steps, **({"minutes": args.minutes, "stopped_by_budget": budget["stopped_by_budget"]}
                                 if budget else {}),
              **score(args, ckpt, seed, data, cell)}
    write_json(result, result_file)
    if ckpt is not None and not args.keep_checkpoints:
        for path in (cell / "pretrain").glob("*.pth"):
            path.unlink()
    for folder in ("probe", "order"):  # cached features, heads: only the scores are needed
        shutil.rmtree(cell / folder, ignore_errors=True)
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


NAMES = {"probe": "linear probe top-1 (%)", "probe_lr": "standardised logistic-regression probe top-1 (%)",
         "knn": "kNN top-1 (%)", "knn_std": "kNN on standardised features (%)", "order": "order accuracy (%)",
         "erank": "effective rank", "knn_mid": "kNN on layer3 (%)", "knn_low": "kNN on layer2 (%)",
         "vid": "same video, later clip (%)", "vid_static": "same video, frozen frames (%)"}


def table(results: list[dict], args: argparse.Namespace) -> str:
    """``ablation.md``: one row per variant, mean ± std over seeds, and the flags of the rows."""
    lines = ["| variant (`--terms`) | seeds | pretraining steps | " + " | ".join(NAMES[m] for m in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for variant in VARIANTS:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        cells = []
        for metric in METRICS:
            scale = 1 if metric == "erank" else 100
            values = [scale * r[metric] for r in rows if metric in r]
            if not values:  # scored before the metric existed, checkpoint gone
                cells.append("–")
                continue
            mean, std = mean_std(values)
            cells.append(f"{mean:.1f} ± {std:.1f}" + (f" ({len(values)})" if len(values) < len(rows) else ""))
        steps = sorted({r["steps"] for r in rows if "steps" in r})
        steps_cell = "–" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
        terms = "random init" if VARIANTS[variant] is None else " ".join(VARIANTS[variant])
        lines.append(f"| {variant} ({terms}) | {len(rows)} | {steps_cell} | " + " | ".join(cells) + " |")
    example = next((r["train_flags"] for r in results if r["train_flags"]), [])
    videos = len(read_csv(Path(args.data) / "train.csv", require_labels=True))
    budget = (f"Budget: {args.minutes:g} min of train.py a cell (start-up included), then the newest finished "
              f"epoch is scored; at most {args.epoch} epochs." if args.minutes else f"Budget: {args.epoch} epochs.")
    lines += ["", f"Chance: {100 / len((Path(args.data) / 'classes.txt').read_text().split()):.1f} % top-1, 50 % order, "
              f"{100 / max(videos, 1):.1f} % same video (among {videos}).",
              "", "Pretraining command of a cell (`--terms` and `--seed` vary). " + budget, "",
              "    python train.py " + " ".join(shlex.quote(f) for f in example),
              "", f"Evaluation: linear probe on cached features for {args.probe_epochs} epochs; standardised "
              "logistic-regression probe (L-BFGS, L2 1e-3) and kNN k=20, T=0.07 on one centred clip per video; "
              f"order head {args.order_epochs} epochs.",
              "", "Command: `python scripts/ablation.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`", ""]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = ("probe", "probe_lr", "knn", "order")
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(variants)

    def stats(rows: list[dict], metric: str, scale: float) -> tuple[float, float]:
        values = [scale * r[metric] for r in rows if metric in r]
        return mean_std(values) if values else (math.nan, 0.0)  # no bar for a metric these cells lack

    for i, variant in enumerate(variants):
        rows = [r for r in results if r["variant"] == variant]
        bars = [stats(rows, m, 100) for m in shown]
        axes[0].bar([k + i * width for k in range(len(shown))], [b[0] for b in bars], width,
                    yerr=[b[1] for b in bars], label=variant, capsize=2)
        mean, std = stats(rows, "erank", 1)
        axes[1].bar(i, mean, 0.8, yerr=std, capsize=2)
    axes[0].set_xticks([k + 0.4 - width / 2 for k in range(len(shown))],
                       ["linear probe", "standardised\nlogistic probe", "kNN", "temporal order"])
    axes[0].set_ylabel("accuracy (%), mean ± std over seeds")
    axes[0].legend(fontsize=7)
    axes[1].set_xticks(range(len(variants)), variants, rotation=60, fontsize=7)
    axes[1].set_ylabel("effective rank of pooled features")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data = args.data or args.out / "data"
    data = make_motion_data(args.data, seed=args.data_seed)
    cells = [(variant, seed) for seed in range(args.seeds) for variant in args.variants]
    results = []
    for k, (variant, seed) in enumerate(cells):
        print(f"[ablation] cell {k + 1}/{len(cells)}: {variant}, seed {seed}", flush=True)
        with exit_on_error():  # a cell that cannot go on ends the grid: one line, status 1
            results.append(run_cell(args, variant, seed, data))
        r = {"steps": math.nan, **{m: math.nan for m in METRICS}, **results[-1]}  # nan: scored before it existed
        print(f"[ablation] {variant} seed {seed} ({r['steps']} steps): probe {100 * r['probe']:.1f}%, "
              f"standardised logistic probe {100 * r['probe_lr']:.1f}%, kNN {100 * r['knn']:.1f}% "
              f"({100 * r['knn_std']:.1f}% standardised), order {100 * r['order']:.1f}%, effective rank "
              f"{r['erank']:.1f}, kNN layer3/layer2 {100 * r['knn_mid']:.1f}/{100 * r['knn_low']:.1f}%, same video "
              f"{100 * r['vid']:.1f}% ({100 * r['vid_static']:.1f}% frozen)", flush=True)
        text = table(results, args)
        with atomic_write(args.out / "ablation.md", "w") as f:
            f.write(text)
        plot(results, args.out / "ablation.png")
    print(text)
    print(f"-> {args.out / 'ablation.md'}, {args.out / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
