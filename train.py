#!/usr/bin/env python
"""MFO self-supervised pretraining (Qian et al., ICCV 2021).

One process:                      python train.py --csv_file kinetics.csv
One worker per GPU (or --nproc
CPU workers) on this machine:     python train.py --csv_file kinetics.csv --multiprocessing-distributed
Several machines:                 torchrun --nnodes N --nproc_per_node G ... train.py --csv_file kinetics.csv
Tiny run on generated data:       python train.py --demo
"""
from __future__ import annotations

import argparse
import os
import signal
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets import DataError, PretrainDataset
from datasets.loader import pretrain_loader
from engine import distributed
from engine.checkpoint import CheckpointError, flag_spelling, resume_hint, unwrap
from engine.device import prefetch
from engine.errors import exit_on_error, number
from engine.interrupt import NOTICE, GracefulStop
from engine.lines import closing_lines, epoch_line, reference_line, run_line
from engine.run import (Checkpointer, Finished, StepLog, Training, check_fits, check_global_batch, distribute,
                        explained, open_outputs, reads_at, resume_checkpoint, seed_everything, set_train_mode)
from engine.rundir import claim_out_dir
from engine.sampling import EpochStream
from engine.tracking import Tracker
from evaluation.demo import DEMO_DATA, DEMO_RUN, parse_with_demo, prepare_demo
from evaluation.monitor import KnnMonitor, batch_health, collapse_in
from losses import TERMS, Objective, PrototypeBank, mfo_objective
from models import BACKBONES, MOTION_STEPS, MFOModel
from models.backbones import HIGH_STRIDE, img_dim_warning, min_seq


# The flags a resume may change (docs/pretraining.md "Stopping and resuming" lists them): where the run writes and how
# fast it goes, never what it computes. --epoch extends a finished run; --train_batch may change with the number
# of processes as long as the global batch stays (engine.run.check_global_batch); every other flag must be the
# checkpoint's.
RESUME_MAY_CHANGE = ("epoch", "max_steps", "workers", "strict_data", "save_every", "keep_epochs", "log_every",
                     "monitor_train_csv", "monitor_test_csv", "monitor_every", "out_dir", "resume", "overwrite",
                     "verbose", "demo", "compile", "train_batch", "multiprocessing_distributed", "nproc",
                     "world_size", "rank", "dist_url", "dist_backend", "dist_timeout")

POSITIVE_INT, PROBABILITY = number(least=1), number(float, least=0, most=1)
HISTORY = 10_000  # per-step values train.main returns: the last this many steps (a long run's would fill memory)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MFO self-supervised video pretraining.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--csv_file", default=None, help="pretraining CSV, rows `path,frames` (see scripts/make_csv.py)")
    g.add_argument("--seq", type=POSITIVE_INT, default=16, help="frames per clip (T)")
    g.add_argument("--sample", type=int, default=2,
                   help="clips taken back to back from each video; must be 2 (the model and the losses use "
                        "exactly clips a, b and the global clip g)")
    g.add_argument("--img_dim", type=POSITIVE_INT, default=112,
                   help="crop size in pixels; at least the backbone's last-map stride (r3d18 and s3d 32, "
                        "r2plus1d18 16), and it warns below twice that (a last map of one position)")
    g.add_argument("--rate", type=number(float, least=1), default=3.0,
                   help="upper bound of the random frame sampling rate")
    g.add_argument("--jitter", type=float, nargs=4, default=[0.5, 0.5, 0.5, 0.25], metavar=("B", "C", "S", "H"),
                   help="per-frame colour jitter strengths: brightness, contrast, saturation, hue "
                        "(0 0 0 0: none; see docs/pretraining.md 'Small data')")
    g.add_argument("--gray_p", type=PROBABILITY, default=0.5, help="per-frame probability of random gray (0: never)")
    g.add_argument("--flip_p", type=PROBABILITY, default=0.5,
                   help="per-clip probability of a horizontal flip (0: never)")
    g.add_argument("--train_batch", type=POSITIVE_INT, default=64, help="videos per batch, per process")
    g.add_argument("--workers", type=int, default=8, help="data loader workers, per process")
    g.add_argument("--strict_data", action="store_true",
                   help="stop at the first unreadable frame or missing folder instead of replacing the video")
    g.add_argument("--demo", action="store_true",
                   help=f"build a synthetic dataset in {DEMO_DATA} and pretrain a tiny configuration on it in "
                        f"{DEMO_RUN}, starting again unless --resume is given (explicit flags still win)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="r3d18", choices=sorted(BACKBONES), help="backbone")
    g.add_argument("--channel", type=POSITIVE_INT, default=128, help="embedding width C of every head")
    g.add_argument("--cluster", type=POSITIVE_INT, default=1000,
                   help="number of prototypes K (paper: 1000 Kinetics, 200 UCF)")
    g = p.add_argument_group("optimisation and schedule (epochs count from 0)")
    g.add_argument("--epoch", type=POSITIVE_INT, default=100, help="number of epochs")
    g.add_argument("--lr", type=number(float, above=0), default=1e-3, help="Adam learning rate")
    g.add_argument("--wd", type=number(float, least=0), default=1e-5, help="Adam weight decay")
    g.add_argument("--lr_decay", type=int, default=70, help="epoch at which the learning rate is multiplied by 0.1")
    g.add_argument("--split", type=int, default=20, help="epoch from which the graph constraint is added")
    g.add_argument("--queue_size", type=POSITIVE_INT, default=1024, help="rows of the prototype bank (FIFO of logits)")
    g.add_argument("--queue_start", type=int, default=10,
                   help="epoch from which Sinkhorn runs over the whole bank instead of the current batch")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for the backbone (CUDA only; ignored on CPU); motion excitation, "
                        "the heads, the prototype layer, Sinkhorn and every loss stay in float32")
    g.add_argument("--compile", action="store_true",
                   help="compile the backbone with torch.compile (off by default: the first steps then take a "
                        "minute or more; see docs/benchmarks.md 'Training speed')")
    g.add_argument("--freeze_bn", action="store_true",
                   help="keep BatchNorm layers in eval mode (running statistics); used to compare runs "
                        "over different numbers of workers")
    g = p.add_argument_group("objective (defaults: the paper's)")
    g.add_argument("--terms", nargs="+", choices=TERMS, default=list(TERMS), metavar="TERM",
                   help=f"terms that enter the total loss, any of: {' '.join(TERMS)} (graph only from --split); "
                        "every term is still computed and logged")
    g.add_argument("--tau", type=float, default=0.07, help="temperature of the contrast, alignment and graph terms")
    g.add_argument("--proto_tau", type=float, default=0.1, help="temperature of the prototype softmax")
    g.add_argument("--sk_eps", type=float, default=0.05, help="Sinkhorn entropy regularisation epsilon")
    g.add_argument("--sk_iters", type=int, default=3, help="Sinkhorn iterations")
    g.add_argument("--level_weights", type=float, nargs=3, default=[1.0, 0.5, 0.3], metavar=("HIGH", "MID", "LOW"),
                   help="weights of the high, mid and low levels")
    g.add_argument("--proto_weight", type=float, default=0.5, help="weight of the prototype term")
    g.add_argument("--thres", "-thres", type=float, default=0.05,
                   help="similarity threshold of the graph inference")
    g = p.add_argument_group("monitor (kNN on labelled videos, rank 0 logs it)")
    g.add_argument("--monitor_train_csv", default=None,
                   help="labelled CSV (path,frames,label) whose videos are the kNN memory; with --monitor_test_csv")
    g.add_argument("--monitor_test_csv", default=None, help="labelled CSV whose videos the kNN classifies")
    g.add_argument("--monitor_every", type=POSITIVE_INT, default=1, help="run the kNN monitor every this many epochs")
    g = p.add_argument_group("run")
    g.add_argument("--out_dir", default="runs/mfo",
                   help="folder for checkpoints, TensorBoard logs and log.jsonl; one run per folder: a folder "
                        "that holds a run needs --resume auto or --overwrite")
    g.add_argument("--resume", default="",
                   help="'auto' continues from OUT_DIR/last.pth when present (else starts from the beginning); "
                        "or a checkpoint path. Needs the same global batch (--train_batch x processes) as the "
                        "checkpoint; the number of processes may change")
    g.add_argument("--overwrite", action="store_true",
                   help="start again in an OUT_DIR that holds a run: deletes its last.pth, epoch_NNNN.pth, "
                        "args.json, log.jsonl and tensorboard/ first (other files are kept)")
    g.add_argument("--keep_epochs", type=number(least=0), default=1, metavar="N",
                   help="write epoch_NNNN.pth (model weights, prototype queue and arguments: what evaluation "
                        "needs; no optimizer state, which only last.pth holds) after every N-th epoch, i.e. "
                        "epochs N-1, 2N-1, ... (1: every epoch; 0: none)")
    g.add_argument("--log_every", type=POSITIVE_INT, default=10, metavar="STEPS",
                   help="read the loss terms every this many steps (one wait for the GPU per interval) and log "
                        "their interval means, the speed and the batch's collapse statistics to TensorBoard; "
                        "log.jsonl's epoch averages still count every step")
    g.add_argument("--save_every", type=int, default=1000,
                   help="also write last.pth every this many steps (0: only at epoch ends)")
    g.add_argument("--max_steps", type=int, default=0,
                   help="stop after this many global steps, saving last.pth (0: run all epochs)")
    g.add_argument("--seed", type=int, default=0, help="base seed; worker r seeds itself with seed + r")
    g.add_argument("--verbose", action="store_true",
                   help="list every missing, unexpected and resized key when a --resume checkpoint does not fit")
    distributed.add_launch_args(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = get_args_parser()
    args = parse_with_demo(parser, argv, "pretrain")
    if args.csv_file is None:
        parser.error("--csv_file is required (or --demo for a run on generated data)")
    least = min_seq(args.arch, MOTION_STEPS)
    if args.seq < least:
        parser.error(f"--seq {args.seq}: {args.arch} needs at least {least} frames per clip (motion excitation "
                     "compares time steps of the layer3 map, which needs two; the paper uses 16)")
    launched = args.multiprocessing_distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.train_batch < 2 and not launched:
        parser.error(f"--train_batch {args.train_batch}: the contrastive terms need a global batch of at least 2 "
                     "videos (one clip pair has no negatives: inst would be 0 and inst_acc 1)")
    if min(args.jitter) < 0 or args.jitter[3] > 0.5:
        parser.error(f"--jitter needs 4 values >= 0, the hue at most 0.5, got {' '.join(map(str, args.jitter))}")
    if args.sample != 2:
        parser.error(f"--sample {args.sample}: must be 2, the model and the losses use exactly clips a, b and g")
    stride = HIGH_STRIDE[args.arch]
    if args.img_dim < stride:
        parser.error(f"--img_dim {args.img_dim}: below {stride} pixels the last feature map of {args.arch} "
                     f"(stride {stride}) is one position that sees mostly padding; use at least {stride} "
                     "(the paper uses 112)")
    if args.overwrite and args.resume:
        parser.error("--overwrite starts a run again, --resume continues it: give one of them")
    try:
        objective_of(args)  # checks its constants
    except ValueError as e:
        parser.error(f"--{e}")
    if not 0 <= args.rank < args.world_size:
        parser.error(f"--rank {args.rank}: the index of this machine is in [0, --world-size {args.world_size})")
    if (args.monitor_train_csv is None) != (args.monitor_test_csv is None):
        parser.error("--monitor_train_csv and --monitor_test_csv go together")
    return args


def objective_of(args: argparse.Namespace) -> Objective:
    """The objective the flags describe."""
    return Objective(terms=tuple(t for t in TERMS if t in args.terms), tau=args.tau, proto_tau=args.proto_tau,
                     sk_eps=args.sk_eps, sk_iters=args.sk_iters, level_weights=tuple(args.level_weights),
                     proto_weight=args.proto_weight, thres=args.thres)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, bank: PrototypeBank, clips: torch.Tensor, *,
               use_graph: bool, use_queue: bool, freeze_prototypes: bool, objective: Objective, amp: bool,
               return_outputs: bool = False):
    """One optimisation step on a batch ``clips`` [B,3,3,T,H,W]; returns the loss and its detached terms
    (and, with ``return_outputs``, the model's detached outputs, which ``batch_health`` reads).

    Nothing here waits for the device: the loss and the terms stay device tensors, to be read by the
    caller once per logging interval (``StepLog``), where a non-finite loss is caught.

    Prototype rows are L2-normalised before the forward pass (so logits are cosines) and hence
    before every optimiser step; with ``freeze_prototypes`` (epoch 0) their gradient is dropped.
    The global batch's logits are pushed into ``bank`` before the loss reads it.
    """
    core = unwrap(model)
    core.normalize_prototypes()
    with torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(clips, with_graph=use_graph)
    out = {k: v.float() for k, v in out.items()}
    bank.push_local(out["logits"])  # the global batch's logits, without gradient
    loss, terms = mfo_objective(out, bank.read(use_queue), use_graph=use_graph, objective=objective)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if freeze_prototypes:
        for p in core.prototypes.parameters():
            p.grad = None
    optimizer.step()
    if return_outputs:
        return loss, terms, {k: v.detach() for k, v in out.items()}
    return loss, terms


def train_one_epoch(training: "Training", batches, *, steps: int, args: argparse.Namespace,
                    ctx: distributed.Context, objective: Objective, tracker: Tracker, amp: bool,
                    save: Callable[[], None], history: list[dict] | deque,
                    stop: GracefulStop | None = None) -> str | None:
    """Train the rest of epoch ``training.run.epoch`` (``steps`` batches in all) on ``batches``, an iterator of
    ``(clips [B,3,3,T,H,W] on the device, replaced-video counts)`` at the epoch's next batch.

    Values are read every ``--log_every`` steps, at the epoch's last step and before a checkpoint
    (``save()``: every ``--save_every`` steps, at ``--max_steps`` and when ``stop`` says so, asked after
    every step on every rank): TensorBoard gets their means over the interval, ``history`` and
    ``training.run`` every step's values. Returns None at the end of the epoch, else why it stopped early after saving
    (``"max_steps"`` or ``"signal"``).
    """
    state = training.run
    use_graph, use_queue = state.epoch >= args.split, state.epoch >= args.queue_start
    set_train_mode(training.model, args.freeze_bn)
    clips_per_step = 3 * args.train_batch * ctx.world_size
    bar = tracker.progress(total=steps, initial=state.step_in_epoch, desc=f"epoch {state.epoch}")
    log = StepLog(batch_health)
    while state.step_in_epoch < steps:
        tic = time.perf_counter()
        clips, n_replaced = next(batches)
        log.waited += time.perf_counter() - tic
        state.global_step += 1
        state.step_in_epoch += 1
        # whether this step reads (and so reaches the collectives below) depends only on counters and flags
        # that every rank shares; the rank decides only what it keeps: the batch's health, which rank 0 logs
        read = reads_at(state.global_step, state.step_in_epoch, steps, args.log_every)
        health = read and ctx.is_main
        loss, terms, outputs = train_step(training.model, training.optimizer, training.bank, clips,
                                          use_graph=use_graph, use_queue=use_queue,
                                          freeze_prototypes=state.epoch == 0, objective=objective, amp=amp,
                                          return_outputs=True)
        log.add(state.global_step, {"loss": loss.detach(), **terms}, outputs if health else None,
                int(n_replaced.sum()))
        # a collective after every step on every rank: its answer is the same on every rank
        reason = "signal" if stop is not None and stop.should_stop() else None
        if reason is None and args.max_steps and state.global_step >= args.max_steps:
            reason = "max_steps"
        checkpoint = reason is not None or (args.save_every and state.global_step % args.save_every == 0)
        if not (read or checkpoint):
            continue
        records, seconds = log.read()
        # a collective: `read` and `checkpoint` come from shared counters, flags and the agreed stop
        state.replaced += int(distributed.sum_over_workers(log.replaced))
        state.seconds += seconds
        for record in records:
            state.add(record)
        history.extend(records)
        tracker.scalars({**log.scalars(records, seconds, clips_per_step), "data/replaced_videos": state.replaced,
                         "train/lr": training.optimizer.param_groups[0]["lr"]}, state.global_step)
        bar.update(len(records))
        bar.set_postfix(loss=f"{records[-1]['loss']:.3f}", clips_s=f"{clips_per_step * len(records) / seconds:.1f}")
        log = StepLog(batch_health)  # the next interval starts here: a checkpoint's snapshot below counts in it
        if checkpoint:
            save()
        if reason is not None:
            bar.close()
            return reason
    bar.close()
    return None


def build_training(args: argparse.Namespace, ctx: distributed.Context) -> Training:
    """The model (on the device, channels-last with cuDNN autotuning on CUDA), Adam, the lr schedule and the
    prototype bank of a fresh run; the same on every rank."""
    torch.manual_seed(args.seed)  # same initial model on every rank (DDP also broadcasts rank 0's)
    model = MFOModel(backbone=args.arch, channel=args.channel, cluster=args.cluster).to(ctx.device)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: let cuDNN time its kernels once and keep the best
        model.channels_last()
    bank = PrototypeBank(size=args.queue_size, cluster=args.cluster,
                         generator=torch.Generator().manual_seed(args.seed)).to(ctx.device)
    return Training.adam(model, bank, lr=args.lr, wd=args.wd, decay_at=args.lr_decay)


def build_loader(args: argparse.Namespace, ctx: distributed.Context) -> tuple[DataLoader, EpochStream]:
    """The run's one loader of pretraining samples (``datasets.loader.pretrain_loader``) and its sampler."""
    dataset = PretrainDataset(args.csv_file, seq=args.seq, sample=args.sample, rate=args.rate, img_dim=args.img_dim,
                              jitter=args.jitter, gray_p=args.gray_p, flip_p=args.flip_p)
    return pretrain_loader(dataset, batch_size=args.train_batch, workers=args.workers, rank=ctx.rank,
                           world_size=ctx.world_size, seed=args.seed, strict=args.strict_data,
                           pin_memory=ctx.device.type == "cuda")


def resume_from(args: argparse.Namespace, ctx: distributed.Context, training: Training, videos: int) -> list[str]:
    """Restore ``training`` from ``--resume``'s checkpoint, if any, after checking that it continues this run
    exactly (``engine.run.resume_checkpoint``, after the model, the global batch and the data); returns the lines
    to print. A finished run has nothing left to do: :class:`engine.run.Finished`."""
    def check(path: Path, state: dict) -> None:
        check_fits(path, training.core, state, vars(args), names=("arch", "channel", "cluster"),
                   verbose=args.verbose, show=ctx.is_main)
        check_global_batch(path, state, args.train_batch, ctx.world_size)
        if state.get("videos", videos) != videos:  # checkpoints from before this check hold no count
            raise CheckpointError(f"--resume {path} was written for {state['videos']} usable videos in --csv_file "
                                  f"{args.csv_file}, which now gives {videos}: the epochs would hold other samples. "
                                  "Restore the CSV, or start a new run in another --out_dir")

    parser = get_args_parser()
    _, state, lines = resume_checkpoint(args.resume, args.out_dir, flags=vars(args), may_change=RESUME_MAY_CHANGE,
                                        epochs_key="epoch", spelling=flag_spelling(parser), check=check,
                                        defaults={name: parser.get_default(name) for name in vars(args)})
    return lines if state is None else lines + training.restore(state, ctx.rank, ctx.world_size)


def main_worker(ctx: distributed.Context, args: argparse.Namespace) -> list[dict]:
    """Train on one process; returns the values of its last ``HISTORY`` steps (for in-process callers, tests)."""
    if ctx.world_size * args.train_batch < 2:
        raise DataError(f"--train_batch {args.train_batch} on {ctx.world_size} process(es) is a global batch of 1: "
                        "the contrastive terms need at least 2 videos (one clip pair has no negatives); use "
                        "--train_batch 2 or more")
    training = build_training(args, ctx)
    seed_everything(args.seed + ctx.rank)
    loader, stream = build_loader(args, ctx)
    videos = len(loader.dataset)
    try:
        notes = resume_from(args, ctx, training, videos=videos)
    except Finished as done:
        if ctx.is_main:
            print(done, flush=True)
        return []
    run = training.run
    monitor = None  # reads its two CSVs: an input, checked before any output is made
    if args.monitor_train_csv:
        monitor = KnnMonitor(args.monitor_train_csv, args.monitor_test_csv, seq=args.seq, img_dim=args.img_dim,
                             batch_size=args.train_batch, workers=args.workers)
    amp = args.amp and ctx.device.type == "cuda"
    no_amp = "warning: --amp needs CUDA; running in float32 on CPU" if args.amp and not amp else None
    # every input is checked: from here on outputs are written. purge_step drops TensorBoard events an interrupted
    # run logged after its checkpoint (all of them when --resume auto found none yet); the same for log.jsonl
    tracker = open_outputs(args.out_dir, flags=vars(args), overwrite=args.overwrite, enabled=ctx.is_main,
                           headline=run_line(vars(args), ctx.world_size, videos, stream.steps_per_epoch),
                           purge_step=run.global_step + 1 if args.resume else None,
                           notes=[no_amp, img_dim_warning(args.arch, args.img_dim), *notes])
    if args.resume:
        tracker.truncate_log("epoch", below=run.epoch)
    objective = objective_of(args)
    settings = {k: " ".join(map(str, v)) if isinstance(v, tuple) else v for k, v in asdict(objective).items()}
    tracker.hparams({**settings, "lr": args.lr, "train_batch": args.train_batch, "arch": args.arch, "seq": args.seq,
                     "img_dim": args.img_dim})
    distribute(training, ctx, args.compile, args.dist_timeout)
    checkpoints = Checkpointer(args.out_dir, is_main=ctx.is_main, flush=tracker.flush)

    def save(epoch_file: str | None = None) -> None:
        """A collective (every rank's random generators go into last.pth): train_one_epoch saves on shared
        counters, flags and the agreed stop, and the epoch loop below after every epoch."""
        checkpoints.save(lambda rngs: training.files(rngs, vars(args), videos, epoch_file))

    history: deque[dict] = deque(maxlen=HISTORY)
    summary: dict = {}  # the last epoch's line
    warned_collapse = False
    # the global batch equals the checkpoint's, so step_in_epoch global steps are step_in_epoch local batches
    stream.set_span(run.epoch, args.epoch, skip=run.step_in_epoch * args.train_batch)
    batches = prefetch(loader, ctx.device)
    # a rank stuck in a collective (a peer hangs or died) still stops on a signal, without saving
    where = lambda: f"rank {ctx.rank} (global step {run.global_step})"  # noqa: E731
    try:
        with GracefulStop(notice=NOTICE if ctx.is_main else None, grace=min(60.0, 30 * args.dist_timeout),
                          where=where) as stop:
            if monitor is not None and run.global_step == 0:  # the backbone at initialisation: each curve's reference
                run.reference = monitor.log(training.core.backbone, ctx.device, tracker, 0)
                tracker.epoch({"epoch": -1, "global_step": 0, **run.reference})
                tracker.print(reference_line(run.reference))
            while run.epoch < args.epoch:
                reason = train_one_epoch(training, batches, steps=stream.steps_per_epoch, args=args, ctx=ctx,
                                         objective=objective, tracker=tracker, amp=amp, save=save,
                                         history=history, stop=stop)
                if reason is not None:
                    checkpoints.wait()
                    if reason == "signal":
                        raise stop.interrupted(f"interrupted at epoch {run.epoch}, step {run.step_in_epoch} of the "
                                               "epoch; continue with --resume auto" if ctx.is_main else "")
                    tracker.print(f"stopped after {run.global_step} steps (--max_steps); continue with --resume auto")
                    return list(history)
                epoch = run.epoch
                summary = {**training.end_epoch(stream.steps_per_epoch), "objective": asdict(objective)}
                # the monitor is a collective: whether it runs depends on the epoch counter and flags only
                if monitor is not None and ((epoch + 1) % args.monitor_every == 0 or epoch + 1 == args.epoch):
                    summary.update(monitor.log(training.core.backbone, ctx.device, tracker, run.global_step))
                warning = collapse_in(summary, run.reference, training.core.backbone.channels[2], args.train_batch)
                if warning and not warned_collapse:
                    warned_collapse = True
                    tracker.print(warning)
                checkpoints.wait()  # the previous checkpoint is on disk before this epoch's line
                # the line goes first: a crash before the checkpoint below resumes from an earlier one, which drops it
                tracker.epoch(summary)
                tracker.print(epoch_line(summary, run.reference, 3 * args.train_batch * ctx.world_size))
                run.next_epoch()
                keep = args.keep_epochs > 0 and (epoch + 1) % args.keep_epochs == 0
                save(f"epoch_{epoch:04d}.pth" if keep else None)
                if stop.should_stop():  # a signal during the epoch's end (the monitor, the checkpoint)
                    checkpoints.wait()
                    if run.epoch == args.epoch:  # the run is complete: nothing is lost, nothing left to do
                        tracker.print(f"{signal.Signals(stop.signum).name} arrived as the run ended: it is complete, "
                                      f"{Path(args.out_dir) / 'last.pth'} holds its end (epoch {epoch})")
                        break
                    raise stop.interrupted(f"interrupted after epoch {epoch}; continue with --resume auto"
                                           if ctx.is_main else "")
            checkpoints.wait()
        monitored = {k: v for k, v in summary.items() if k.startswith("monitor_")}  # the last epoch's
        for line in closing_lines(args.out_dir, args.demo, run.reference, monitored):
            tracker.print(line)
    except Exception as e:
        raise explained(e, where(), dist_timeout=args.dist_timeout, out_dir=args.out_dir, compiled=args.compile)
    finally:
        batches.close()  # stops the loader's workers
        checkpoints.close()
        tracker.close()
    return list(history)


def main(argv=None) -> list[dict] | None:
    args = parse_args(argv)
    # one process owns --out_dir: this one, unless it is a torchrun rank or a spawn launcher on machine 1, 2, ...
    owner = os.environ.get("RANK", "0") == "0" and args.rank == 0
    lock = None
    with exit_on_error():  # a user error, also one of a loader worker or a spawned trainer: one line, status 1
        try:
            if args.demo:
                prepare_demo(None, [f for f in (args.csv_file, args.monitor_train_csv, args.monitor_test_csv) if f])
            if not Path(args.csv_file).is_file():
                raise DataError(f"--csv_file {args.csv_file}: no such file (make one with scripts/make_csv.py)")
            if owner:
                lock, notes = claim_out_dir(args.out_dir, resume=bool(args.resume), overwrite=args.overwrite)
                for note in notes:
                    print(note, flush=True)
            how = distributed.Launch(spawn=args.multiprocessing_distributed, nproc=args.nproc, nodes=args.world_size,
                                     node_rank=args.rank, dist_url=args.dist_url, backend=args.dist_backend,
                                     timeout=60 * args.dist_timeout)
            try:
                return distributed.launch(main_worker, args, how)
            except distributed.WorkerDied as e:
                raise distributed.WorkerDied(f"{e}; the other workers were stopped. {resume_hint(args.out_dir)}") \
                    from None
        finally:
            if lock is not None:
                lock.release()


if __name__ == "__main__":
    main()
