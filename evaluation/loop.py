"""The downstream protocol's run: its folder, training with exact resume, video-level testing.

- :func:`downstream_run` opens a run once every input is checked: it reads and checks the checkpoint
  to resume (its flags, its epochs), claims ``--out_dir`` (one run per folder, leftovers, ``--overwrite``),
  opens the tracker and catches SIGINT / SIGTERM (``engine.interrupt``); a finished run that
  ``--resume auto`` finds is reported as such, with nothing to do;
- :func:`fit` trains for the epochs left, with atomic ``last.pth`` (and ``best.pth`` with a
  validation set), and stops at a step on a signal with a ``last.pth`` that resumes exactly there;
- :func:`predict_videos` averages the softmax over every clip and view of a video;
  :func:`test_and_report` writes ``results.json`` and the confusion matrix;
- :func:`train_and_test` is the tail ``eval_linear.py`` and ``finetune.py`` share.
"""
from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from engine.checkpoint import (CheckpointError, git_commit, load_backbone, load_checkpoint, save_checkpoint,
                               set_rng_state)
from engine.interrupt import GracefulStop
from engine.run import Checkpointer, Finished, RunState, open_outputs, resume_checkpoint
from engine.rundir import RunFiles, claim_out_dir
from engine.tracking import Tracker, check_finite
from evaluation.data import class_names, train_loader, video_loader
from evaluation.metrics import accuracy_report
from evaluation.protocol import RESUME_MAY_CHANGE, SPELLING, Protocol
from evaluation.report import epoch_line, save_confusion_png, write_json
from models import VideoClassifier

# what a downstream run writes in --out_dir; feature caches (evaluation.features) are meant for the next runs
EVAL_FILES = RunFiles(names=("last.pth", "best.pth", "results.json", "confusion.png", "log.jsonl", "tensorboard",
                             "args.json"),
                      pattern=None, early=("best.pth", "log.jsonl", "tensorboard", "args.json"),
                      shared=r"features_[0-9a-f]+\.pt")


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_classifier(cfg: Protocol, head: str, dropout: float = 0.0) -> tuple[VideoClassifier, str]:
    """``VideoClassifier`` with the ``pretrained`` backbone (loaded strictly) or a random one, and a line
    saying which; a missing or unfit checkpoint raises ``CheckpointError``."""
    model = VideoClassifier(cfg.arch, cfg.classes, head=head, dropout=dropout)
    if cfg.pretrained:
        return model, load_backbone(model.backbone, cfg.pretrained)["summary"]
    return model, f"random initialisation of {cfg.arch} (seed {cfg.seed})"


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """An open downstream run (see :func:`downstream_run`). ``done``: the results of a finished run that
    ``--resume auto`` found (nothing else is set then)."""

    tracker: Tracker | None = None
    state: dict | None = None
    device: torch.device | None = None
    stop: GracefulStop | None = None
    done: dict | None = None


def _finished_results(cfg: Protocol) -> dict | None:
    """The results of a run that trained all ``cfg.epochs`` and was tested (None when there are none, or
    they are those of the run before an extension)."""
    results = Path(cfg.out_dir) / "results.json"
    saved = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    return saved if saved.get("args", {}).get("epochs") == cfg.epochs else None


def resume_state(cfg: Protocol) -> tuple[dict | None, list[str]]:
    """The checkpoint ``cfg.resume`` names (None without one), checked to continue this run
    (``engine.run.resume_checkpoint``: flags but ``RESUME_MAY_CHANGE``, epochs), and the lines to print. A run
    that trained all its epochs and was tested is finished (``engine.run.Finished``). Reads only."""
    results = _finished_results(cfg) if cfg.resume else None
    tested = None if results is None else \
        f" ({Path(cfg.out_dir) / 'results.json'}: top-1 {100 * results.get('top1', float('nan')):.2f}%)"
    _, state, lines = resume_checkpoint(cfg.resume, cfg.out_dir, flags=cfg.flags, may_change=RESUME_MAY_CHANGE,
                                        epochs_key="epochs", first_epoch=1, spelling=SPELLING, finished=tested)
    return state, lines


@contextmanager
def downstream_run(cfg: Protocol, notes: tuple[str, ...] = (), headline: str = "") -> Iterator[Run]:
    """Open the run of ``cfg``: call it once every input is checked (``read_inputs``, ``build_classifier``).

    Before anything is written: the resume checkpoint is read and checked (:func:`resume_state`), and
    ``--out_dir`` checked (``engine.rundir``). A run that ``--resume auto`` finds finished (all its
    epochs trained and tested) yields ``Run(done=results)`` and writes nothing. Otherwise the folder is
    claimed (locked; leftovers of a run that saved nothing removed with ``--resume``; the outputs of
    ``EVAL_FILES`` deleted with ``--overwrite``), the tracker opened, every flag written to
    ``args.json``, ``headline`` (one line: what the run does, see ``evaluation.report.run_line``) and
    ``notes`` printed, and SIGINT / SIGTERM caught until the block ends (see :func:`fit`)."""
    try:
        state, resume_notes = resume_state(cfg)
    except Finished as line:
        print(line, flush=True)
        yield Run(done=_finished_results(cfg))
        return
    lock, claim_notes = claim_out_dir(cfg.out_dir, resume=bool(cfg.resume), overwrite=cfg.overwrite, files=EVAL_FILES)
    tracker = None
    try:
        with GracefulStop() as stop:
            tracker = open_outputs(cfg.out_dir, flags=cfg.flags, headline=f"{headline or cfg.checkpoint_name} -> "
                                   f"{cfg.out_dir}", overwrite=cfg.overwrite, files=EVAL_FILES,
                                   notes=(*claim_notes, *notes, *resume_notes),
                                   purge_step=state["step"] if state else None)
            yield Run(tracker=tracker, state=state, device=device(), stop=stop)
    finally:
        if tracker is not None:
            tracker.close()
        lock.release()


# ----------------------------------------------------------------------------- training


def saved_sums(run: RunState) -> dict:
    """``last.pth``'s ``epoch_sums`` of the epoch in progress: batches done, loss summed over clips, clips right."""
    return {"steps": run.step_in_epoch, "loss": run.sums.get("loss", 0.0), "correct": run.sums.get("acc", 0),
            "seen": run.counts.get("loss", 0)}


def loaded_sums(saved: dict) -> RunState:
    """The epoch in progress that :func:`saved_sums` wrote."""
    seen = saved.get("seen", 0)
    return RunState(step_in_epoch=saved.get("steps", 0), sums={"loss": saved.get("loss", 0.0),
                                                                "acc": saved.get("correct", 0)} if seen else {},
                    counts={"loss": seen, "acc": seen} if seen else {})


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, dev: torch.device,
                tracker: Tracker, epoch: int, step: int, frozen: nn.Module | None = None, *,
                sums: RunState | None = None, stop: GracefulStop | None = None) -> tuple[dict, int]:
    """One epoch of cross-entropy training; ``frozen`` (a submodule) stays in ``eval()`` mode.

    ``sums``: the epoch's progress (``step_in_epoch`` and the running means), updated in place (a resumed
    epoch passes what its checkpoint held; ``loader`` then skips the batches done). ``stop``: asked after
    every step but the epoch's last; when it says stop, the epoch ends there, short of its steps (the caller
    asks at the epoch's end).
    Returns the epoch's mean ``loss`` and clip ``acc`` (over
    every step, also those before a resume) and the global step after it.
    """
    sums = RunState() if sums is None else sums
    model.train()
    if frozen is not None:
        frozen.eval()
    total = sums.step_in_epoch + len(loader)
    bar = tracker.progress(loader, desc=f"epoch {epoch}", leave=False, initial=sums.step_in_epoch, total=total)
    for inputs, labels in bar:
        inputs, labels = inputs.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        logits = model(inputs)  # [B,K]
        loss = F.cross_entropy(logits, labels)
        check_finite(loss.detach(), {"cross_entropy": loss.detach()}, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hits = (logits.argmax(1) == labels).sum().item()
        sums.step_in_epoch += 1
        sums.add({"loss": loss.item(), "acc": hits / len(labels)}, weight=len(labels))
        tracker.scalars({"loss": loss.item(), "acc": hits / len(labels),
                         "lr": optimizer.param_groups[-1]["lr"]}, step, prefix="train/")
        step += 1
        if stop is not None and sums.step_in_epoch < total and stop.should_stop():
            break
    bar.close()
    return {"loss": 0.0, "acc": 0.0, **sums.means()}, step


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A copy of every parameter and buffer of ``module``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(before: dict[str, Tensor], module: nn.Module) -> None:
    """Raise if any parameter or buffer (BatchNorm statistics included) differs from ``before``."""
    changed = sorted(k for k, v in module.state_dict().items() if not torch.equal(v.cpu(), before[k].cpu()))
    if changed:
        raise RuntimeError(f"the frozen backbone changed during the first epoch ({len(changed)} tensors, e.g. "
                           f"{', '.join(changed[:5])}); it must stay in eval() mode with requires_grad=False")


def trained_state(model: nn.Module, frozen: nn.Module | None) -> dict[str, Tensor]:
    """``model.state_dict()`` without the frozen submodule's tensors (those come from ``--pretrained``)."""
    state = model.state_dict()
    if frozen is None:
        return state
    prefix = next(name for name, module in model.named_modules() if module is frozen) + "."
    return {k: v for k, v in state.items() if not k.startswith(prefix)}


def load_trained_state(model: nn.Module, state: dict[str, Tensor], frozen: nn.Module | None) -> None:
    """Load what :func:`trained_state` saved; every other key must belong to the frozen submodule."""
    expected = trained_state(model, frozen)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint does not match the model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; resume with the same script and flags as the run that wrote it")
    model.load_state_dict(state, strict=False)


def fit(cfg: Protocol, model: nn.Module, train_set: Dataset, val_set: Dataset | None,
        optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, tracker: Tracker,
        state: dict | None, dev: torch.device, frozen: nn.Module | None = None,
        stop: GracefulStop | None = None) -> dict:
    """Train for ``cfg.epochs`` epochs, resuming from ``state``; leave the weights to test in ``model``.

    Reads ``out_dir``, ``epochs``, ``batch_size``, ``workers``, ``seed`` and ``flags`` of ``cfg``.

    ``frozen``: a submodule that must not change; checked after the first epoch, and left out of the
    checkpoints (``last.pth``, ``best.pth``), which hold only what training changes. After a resume,
    TensorBoard scalars and ``log.jsonl`` equal an uninterrupted run's. With a validation
    set, each epoch is scored on it, ``best.pth`` keeps the best one and its weights are the ones
    tested. Each epoch appends its record to ``log.jsonl`` and prints one line (``evaluation.report.epoch_line``). Returns ``{'epoch': tested epoch (1-based), 'selected_by': 'last epoch'|'validation top1', 'val_top1'}``.

    ``stop`` (see ``engine.interrupt``) is asked after every training step: on a stop, ``last.pth`` is
    written at that step (with the epoch's progress, running sums and random state, so that the resumed
    run repeats no batch and gets the same weights) and ``stop.interrupted`` is raised with the line
    ``interrupted at epoch E, step S of the epoch; ...``. Validation is not interrupted: a stop asked
    during it is taken at the epoch's end.
    """
    out_dir = Path(cfg.out_dir)
    model.to(dev)
    start, step, best, sums = 0, 0, {"epoch": 0, "val_top1": None}, RunState()
    if state:
        load_trained_state(model, state["model"], frozen)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, step, best = state["epoch"], state["step"], state["best"]
        sums = loaded_sums(state.get("epoch_sums", {}))
        tracker.truncate_log("epoch", below=start + 1)  # the lines of the epochs after the checkpoint's (1-based)
    loader = train_loader(train_set, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed)
    val = video_loader(val_set, workers=cfg.workers) if val_set is not None else None
    before = snapshot(frozen) if frozen is not None and start == 0 else None

    checkpoints = Checkpointer(out_dir, flush=tracker.flush)  # one process: a collective of one

    def save(epoch_done: int) -> None:
        checkpoints.save(lambda rngs: {"last.pth": {
            "model": trained_state(model, frozen), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch_done, "step": step, "step_in_epoch": sums.step_in_epoch,
            "epoch_sums": saved_sums(sums), "best": best, "rng": rngs[0], "args": dict(cfg.flags)}})

    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        loader.sampler.set_epoch(epoch, skip=sums.step_in_epoch * cfg.batch_size)
        total = sums.step_in_epoch + len(loader)
        stats, step = train_epoch(model, loader, optimizer, dev, tracker, epoch, step, frozen, sums=sums, stop=stop)
        if sums.step_in_epoch < total:  # stopped
            save(epoch)
            checkpoints.close()
            raise stop.interrupted(f"interrupted at epoch {epoch + 1}, step {sums.step_in_epoch} of the epoch (saved in "
                                   f"{out_dir / 'last.pth'}); continue with --resume auto")
        if before is not None:
            assert_unchanged(before, frozen)
            before = None
        scheduler.step()
        record = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in stats.items()}}
        if val is not None:
            probs, labels = predict_videos(model, val, dev, cfg.batch_size)
            record["val_top1"] = (probs.argmax(1) == labels).double().mean().item()
            # at the epoch's last step: a resumed run purges the steps from its checkpoint's ``step`` on
            tracker.scalars({"top1": record["val_top1"]}, step - 1, prefix="val/")
            if best["val_top1"] is None or record["val_top1"] > best["val_top1"]:
                best = {"epoch": epoch + 1, "val_top1": record["val_top1"]}
                save_checkpoint({"model": trained_state(model, frozen), "epoch": epoch + 1}, out_dir / "best.pth")
        checkpoints.wait()  # the previous checkpoint is on disk before this epoch's line
        # the epoch's logs reach the disk before its checkpoint (which flushes them): a resume from an earlier one
        # drops them
        tracker.epoch(record)
        sums = RunState()
        save(epoch + 1)
        tracker.print(epoch_line(epoch + 1, cfg.epochs, stats["loss"], stats["acc"], time.perf_counter() - began,
                                 val_top1=record.get("val_top1")))
        if stop is not None and epoch + 1 < cfg.epochs and stop.should_stop():
            checkpoints.close()
            raise stop.interrupted(f"interrupted after epoch {epoch + 1} (saved in {out_dir / 'last.pth'}); "
                                   "continue with --resume auto")
    checkpoints.close()
    if val is None:
        return {"epoch": cfg.epochs, "selected_by": "last epoch", "val_top1": None}
    load_trained_state(model, load_checkpoint(out_dir / "best.pth")["model"], frozen)
    tracker.print(f"testing epoch {best['epoch']} (best validation top-1 {best['val_top1']:.4f})")
    return {"epoch": best["epoch"], "selected_by": "validation top1", "val_top1": best["val_top1"]}


# ----------------------------------------------------------------------------- testing


def video_probs(clip_logits: Tensor, counts: Tensor) -> Tensor:
    """Softmax of each clip, averaged over the clips (windows x views) of each video.

    ``clip_logits [sum(counts), K]`` holds video 0's clips, then video 1's, ...; returns ``[V, K]``.
    """
    probs = clip_logits.float().softmax(1)  # [M,K]
    return torch.stack([chunk.mean(0) for chunk in probs.split(counts.tolist())])  # [V,K]


@torch.no_grad()
def predict_videos(model: nn.Module, loader: DataLoader, dev: torch.device, chunk: int,
                   tracker: Tracker | None = None, stop: GracefulStop | None = None) -> tuple[Tensor, Tensor]:
    """Video-level class probabilities ``[V, K]`` and labels ``[V]``; clips forwarded ``chunk`` at a time.

    ``loader`` yields what ``evaluation.data.collate_videos`` makes; a video's clips are only materialised in
    float ``chunk`` at a time (``clips.split(chunk)``). ``stop``, asked after every video: on a stop,
    ``stop.interrupted`` is raised (nothing of the test is kept)."""
    model.eval()
    probs, labels = [], []
    batches = tracker.progress(loader, desc="test", leave=False) if tracker else loader
    for clips, video_labels, counts in batches:
        logits = torch.cat([model(part.to(dev, non_blocking=True)).cpu() for part in clips.split(chunk)])  # [M,K]
        probs.append(video_probs(logits, counts))
        labels.append(video_labels)
        if stop is not None and stop.should_stop():
            raise stop.interrupted("interrupted while testing; the training is saved, --resume auto tests it again")
    return torch.cat(probs), torch.cat(labels)


def test_and_report(cfg: Protocol, model: nn.Module, test_set: Dataset, dev: torch.device, tracker: Tracker,
                    extra: dict, stop: GracefulStop | None = None) -> dict:
    """Video-level test; write ``results.json`` and ``confusion.png`` to ``cfg.out_dir``; return the results."""
    names = class_names(cfg)
    probs, labels = predict_videos(model, video_loader(test_set, workers=cfg.workers), dev, cfg.batch_size, tracker,
                                   stop=stop)
    report = accuracy_report(probs, labels, names)
    results = {"top1": report["top1"], "top5": report["top5"], "per_class_accuracy": report["per_class"],
               "test_videos": len(labels), "test_views": cfg.test_views, "checkpoint": cfg.checkpoint_name,
               "args": copy.deepcopy(dict(cfg.flags)), "git_commit": git_commit(), **extra}
    out_dir = Path(cfg.out_dir)
    write_json(results, out_dir / "results.json")
    save_confusion_png(report["confusion"], names, out_dir / "confusion.png",
                       title=f"top-1 {100 * report['top1']:.1f}% over {len(labels)} test videos")
    tracker.scalars({"top1": report["top1"], "top5": report["top5"]}, extra.get("epoch", 0), prefix="test/")
    tracker.print(f"video-level test accuracy over {len(labels)} videos: top-1 {100 * report['top1']:.2f}%  "
                  f"top-5 {100 * report['top5']:.2f}%  -> {out_dir / 'results.json'}")
    return results


def train_and_test(cfg: Protocol, run: Run, model: nn.Module, sets: tuple[Dataset, Dataset | None, Dataset],
                   optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, *,
                   protocol: str, frozen: nn.Module | None = None) -> dict:
    """The shared tail of the probe and fine-tuning: :func:`fit` on ``sets`` (train, validation or None,
    test), then :func:`test_and_report` with ``protocol`` named in the results; returns the results."""
    train_set, val_set, test_set = sets
    chosen = fit(cfg, model, train_set, val_set, optimizer, scheduler, run.tracker, run.state, run.device,
                 frozen=frozen, stop=run.stop)
    return test_and_report(cfg, model, test_set, run.device, run.tracker, {"protocol": protocol, **chosen},
                           stop=run.stop)
