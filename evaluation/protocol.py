"""The downstream protocol shared by ``eval_linear.py`` and ``finetune.py`` (CoCLR's, fixed).

- flags: :func:`add_downstream_args` (data, model, run and optimisation), read into a frozen
  :class:`Protocol` by :meth:`Protocol.from_flags`; every function below takes that, not the parser's
  ``Namespace``;
- data: train clips with CoCLR's evaluation augmentation; test videos covered by half-overlapping
  windows x views; ``--val_fraction`` of the *train* videos held out to choose an epoch;
- training: :func:`fit` runs the epochs with atomic ``last.pth`` (and ``best.pth`` on validation)
  checkpoints, exact resume, TensorBoard scalars and ``log.jsonl``;
- testing: :func:`predict_videos` averages the softmax over every clip and view of a video;
  :func:`test_and_report` writes ``results.json`` and the confusion-matrix PNG.

Model selection never looks at the test split: the last epoch is reported, or the epoch with the
best accuracy on the held-out train videos.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from datasets.index import DataError, FrameDecodeError, read_csv
from datasets.loader import loader_kwargs
from engine.checkpoint import (CheckpointError, git_commit, load_backbone, load_checkpoint, resolve_resume, rng_state,
                               save_checkpoint, set_rng_state)
from engine.files import atomic_write
from engine.sampling import ResumableSampler, SeededSamples
from engine.tracking import Tracker, check_finite, format_args
from evaluation.metrics import accuracy_report
from evaluation.report import read_class_names, save_confusion_png, write_json
from models import BACKBONES, VideoClassifier

NUM_CLASSES = {"ucf101": 101, "hmdb51": 51}
VIEWS = ("center", "five", "ten")


def add_downstream_args(parser: argparse.ArgumentParser, *, out_dir: str, lr: float, wd: float, epochs: int,
                        schedule: list[int], batch_size: int) -> None:
    """Flags common to the linear probe and fine-tuning; optimisation defaults are the caller's."""
    init = parser.add_argument_group("initialisation (one of)").add_mutually_exclusive_group(required=True)
    init.add_argument("--pretrained", default="", metavar="CKPT",
                      help="train.py checkpoint whose backbone is evaluated (must load fully)")
    init.add_argument("--random_init", action="store_true",
                      help="randomly initialised backbone: the baseline without pretraining")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(NUM_CLASSES), default=None,
                      help="downstream dataset; its number of classes (101 or 51) must match the CSV labels "
                           "(default: none: the classes are the labels' max + 1 over both CSVs)")
    data.add_argument("--num_classes", type=int, default=0,
                      help="number of classes, must match the CSV labels (default: 0 = the labels' max + 1 over "
                           "both CSVs)")
    data.add_argument("--train_csv", required=True, help="CSV of training videos: path,frames,label (no header)")
    data.add_argument("--test_csv", required=True, help="CSV of test videos: path,frames,label (no header)")
    data.add_argument("--class_names", default="",
                      help="text file of class names in label order, e.g. classInd.txt (default: class indices)")
    data.add_argument("--seq", type=int, default=16, help="frames per clip (default: 16)")
    data.add_argument("--img_dim", type=int, default=112, help="clip height and width in pixels (default: 112)")
    data.add_argument("--test_views", choices=VIEWS, default="center",
                      help="spatial views per test window: centre crop, 5 or 10 (with flips) crops (default: center)")
    data.add_argument("--val_fraction", type=float, default=0.0,
                      help="fraction of the train videos held out to choose an epoch, whole UCF-101 groups "
                           "(v_<Class>_gNN_*) at a time; 0 reports the last epoch (default: 0)")
    data.add_argument("--workers", type=int, default=4, help="data-loading processes (default: 4)")

    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=BACKBONES, default="r3d18", help="backbone (default: r3d18)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    optim.add_argument("--batch_size", type=int, default=batch_size,
                       help=f"clips per training step, and per forward pass at test time (default: {batch_size})")
    optim.add_argument("--lr", type=float, default=lr, help=f"learning rate (default: {lr:g})")
    optim.add_argument("--wd", type=float, default=wd, help=f"weight decay (default: {wd:g})")
    optim.add_argument("--schedule", type=int, nargs="*", default=schedule,
                       help=f"epochs at which the lr is multiplied by 0.1 (default: {' '.join(map(str, schedule))})")

    run = parser.add_argument_group("run")
    run.add_argument("--out_dir", default=out_dir,
                     help=f"folder for checkpoints, results.json, TensorBoard and logs (default: {out_dir})")
    run.add_argument("--resume", default="",
                     help="'auto' continues from out_dir/last.pth if present, or a checkpoint path (default: none)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def check_downstream_args(parser: argparse.ArgumentParser, cfg: "Protocol") -> None:
    """Stop with a parser error on values that cannot work."""
    for name in ("epochs", "batch_size", "seq", "img_dim"):
        if getattr(cfg, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.workers < 0:
        parser.error(f"--workers must be >= 0, got {cfg.workers}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        parser.error(f"--val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.num_classes < 0:
        parser.error(f"--num_classes must be >= 1 (or 0: from the CSV labels), got {cfg.num_classes}")
    if sorted(set(cfg.schedule)) != list(cfg.schedule):
        parser.error(f"--schedule must list increasing epochs, got {list(cfg.schedule)}")


@dataclass(frozen=True)
class Protocol:
    """What the downstream flags of :func:`add_downstream_args` say, read-only.

    ``flags`` holds every flag of the command line (the entry script's own too), recorded as is in
    checkpoints and ``results.json``.
    """

    train_csv: str
    test_csv: str
    out_dir: str
    pretrained: str = ""
    random_init: bool = False
    arch: str = "r3d18"
    dataset: str | None = None
    num_classes: int = 0
    class_names: str = ""
    seq: int = 16
    img_dim: int = 112
    test_views: str = "center"
    val_fraction: float = 0.0
    workers: int = 4
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    wd: float = 1e-3
    schedule: tuple[int, ...] = ()
    resume: str = ""
    seed: int = 0
    flags: Mapping = field(default_factory=dict, compare=False)

    @classmethod
    def from_flags(cls, flags: Mapping) -> "Protocol":
        """The protocol from a mapping of flag values (``vars(args)``), keeping all of them in ``flags``."""
        names = [f.name for f in fields(cls) if f.name != "flags"]
        values = {name: flags[name] for name in names if name in flags}
        if "schedule" in values:
            values["schedule"] = tuple(values["schedule"])
        return cls(**values, flags=dict(flags))

    @property
    def classes(self) -> int:
        """Number of classes: ``num_classes`` when set, else the ``dataset``'s (see :func:`read_inputs`)."""
        if not (self.num_classes or self.dataset):
            raise ValueError("the number of classes is not known: set num_classes (read_inputs does)")
        return self.num_classes or NUM_CLASSES[self.dataset]

    def class_name_list(self) -> list[str]:
        """Class names in label order, from the ``class_names`` file or the class indices."""
        k = self.classes
        return read_class_names(self.class_names, k) if self.class_names else [str(c) for c in range(k)]

    @property
    def checkpoint_name(self) -> str:
        """What results.json records as the evaluated checkpoint."""
        return str(self.pretrained) if self.pretrained else f"random_init (seed {self.seed})"


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_inputs(cfg: Protocol) -> tuple[Protocol, list[int], list[int]]:
    """Read and check every input named by ``cfg`` before anything is written; raise ``DataError``.

    Both CSVs (3 columns, at least one row, frame folders present), the number of classes and
    ``class_names``. The classes are the labels' max + 1 over both CSVs; an explicit ``num_classes``
    or ``dataset`` must equal it (a label beyond it is an error naming its file and line).
    Returns ``cfg`` with ``num_classes`` set, and the (train, validation) indices of the train videos
    (see :func:`split_train_val`).
    """
    explicit = [(f"--num_classes {cfg.num_classes}", cfg.num_classes)] if cfg.num_classes else []
    explicit += [(f"--dataset {cfg.dataset}", NUM_CLASSES[cfg.dataset])] if cfg.dataset else []
    bound = min((k for _, k in explicit), default=None)
    rows = {path: read_csv(path, require_labels=True, num_classes=bound) for path in (cfg.train_csv, cfg.test_csv)}
    found = max(r.label for records in rows.values() for r in records) + 1
    for flag, k in explicit:
        if k != found:
            raise DataError(f"{flag} means {k} classes, but the labels of {cfg.train_csv} and {cfg.test_csv} "
                            f"give {found} (max label {found - 1}); drop {flag.split()[0]} to take the classes "
                            "from the labels, or fix the CSVs")
    cfg = replace(cfg, num_classes=found)
    if cfg.class_names:
        read_class_names(cfg.class_names, found)
    names = [record.path.name for record in rows[cfg.train_csv]]
    train_idx, val_idx = split_train_val(names, cfg.val_fraction, cfg.seed)
    return cfg, train_idx, val_idx


def start_run(cfg: Protocol, notes: tuple[str, ...] = ()) -> tuple[Tracker, dict | None, torch.device]:
    """Load the resume checkpoint (if any), then open the tracker and print the arguments and ``notes``.

    Call it once every input is checked (:func:`read_inputs`, :func:`build_classifier`): the tracker
    creates ``out_dir``. Returns the tracker, the resume state (or None) and the device to run on."""
    path = resolve_resume(cfg.resume, cfg.out_dir)
    state = load_checkpoint(path) if path else None
    tracker = Tracker(cfg.out_dir, purge_step=state["step"] if state else None)
    tracker.print(format_args(cfg.flags, git_commit()))
    for note in notes:
        tracker.print(note)
    if state:
        tracker.print(f"resuming from {path} (epoch {state['epoch']} done)")
    return tracker, state, device()


def build_classifier(cfg: Protocol, head: str, dropout: float = 0.0) -> tuple[VideoClassifier, str]:
    """``VideoClassifier`` with the ``pretrained`` backbone (loaded strictly) or a random one, and a line
    saying which; a missing or unfit checkpoint raises ``CheckpointError``."""
    model = VideoClassifier(cfg.arch, cfg.classes, head=head, dropout=dropout)
    if cfg.pretrained:
        return model, load_backbone(model.backbone, cfg.pretrained)["summary"]
    return model, f"random initialisation of {cfg.arch} (seed {cfg.seed})"


# ----------------------------------------------------------------------------- data

_GROUP = re.compile(r"^v_(?P<group>.+_g\d+)_c\d+$")  # UCF-101: v_<Class>_g08_c01 -> <Class>_g08


def split_train_val(names: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split of the train videos ``names`` into (train, validation) indices, both sorted.

    Videos named as UCF-101's ``v_<Class>_g<NN>_c<MM>`` are held out by group (``<Class>_g<NN>``: the
    clips of one actor and scene), so a group never lands on both sides; other videos one by one.
    Units are drawn in a seeded random order until ``round(len(names) * fraction)`` videos are held out.
    """
    units: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        match = _GROUP.match(name)
        units.setdefault(match["group"] if match else f"video {i}", []).append(i)
    groups = list(units.values())
    n, n_val = len(names), round(len(names) * fraction)
    val: list[int] = []
    for u in torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist():
        if len(val) >= n_val:
            break
        val += groups[u]
    if fraction > 0 and not 0 < len(val) < n:
        raise DataError(f"--val_fraction {fraction} of {n} train videos ({len(groups)} groups) leaves an empty "
                        "split; change --val_fraction")
    held_out = set(val)
    return [i for i in range(n) if i not in held_out], sorted(val)


def video_datasets(cfg: Protocol, train_idx: list[int], val_idx: list[int]) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train clips with augmentation, held-out train videos or None, test videos) from the CSVs.

    ``train_idx``, ``val_idx``: the split of :func:`read_inputs`; no held-out set when ``val_idx`` is empty."""
    from datasets import ClipDataset

    k = cfg.classes  # the datasets check every label against it
    train = ClipDataset(cfg.train_csv, "train", seq=cfg.seq, img_dim=cfg.img_dim, num_classes=k)
    test = ClipDataset(cfg.test_csv, "test", seq=cfg.seq, img_dim=cfg.img_dim, views=cfg.test_views,
                       num_classes=k, lazy=True)
    if not val_idx:
        return train, None, test
    held_out = ClipDataset(cfg.train_csv, "test", seq=cfg.seq, img_dim=cfg.img_dim, views=cfg.test_views,
                           num_classes=k, lazy=True)
    return Subset(train, train_idx), Subset(held_out, val_idx), test


def _drop_count(batch: list) -> list:
    """Collate ``((input, label), n_replaced)`` samples of :class:`SeededSamples` into ``[inputs, labels]``."""
    return default_collate([sample for sample, _ in batch])


def train_loader(dataset: Dataset, *, batch_size: int, workers: int, seed: int) -> DataLoader:
    """Shuffled, seeded per (seed, epoch, index); call ``loader.sampler.set_epoch(epoch)`` before each epoch."""
    if len(dataset) < 2:
        raise ValueError(f"training needs at least 2 samples, got {len(dataset)}; check --train_csv")
    return DataLoader(SeededSamples(dataset, seed, strict=True), batch_size=batch_size,
                      sampler=ResumableSampler(dataset, seed=seed), collate_fn=_drop_count,
                      num_workers=workers, drop_last=len(dataset) > batch_size, **loader_kwargs(workers))


def collate_videos(batch: list[tuple]) -> tuple:
    """Videos of ``N_i`` clips -> (their ``sum N_i`` clips, labels ``[V]``, clip counts ``[V]``).

    The clips of a video are a tensor ``[N_i, ...]`` (concatenated) or a ``datasets.clips.VideoClips``
    (kept in uint8 and joined, to be normalised ``chunk`` at a time by :func:`predict_videos`)."""
    first = batch[0][0]
    clips = torch.cat([c for c, _ in batch]) if isinstance(first, Tensor) else type(first).cat([c for c, _ in batch])
    labels = torch.tensor([int(label) for _, label in batch])
    counts = torch.tensor([len(c) for c, _ in batch])
    return clips, labels, counts


def video_loader(dataset: Dataset, *, workers: int) -> DataLoader:
    """One video per item, in order: a video holds all its windows x views."""
    return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_videos, num_workers=workers,
                      **loader_kwargs(workers))


# ----------------------------------------------------------------------------- train and test

def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, dev: torch.device,
                tracker: Tracker, epoch: int, step: int, frozen: nn.Module | None = None) -> tuple[dict, int]:
    """One epoch of cross-entropy training; ``frozen`` (a submodule) stays in ``eval()`` mode.

    Returns the epoch's mean ``loss`` and clip ``acc``, and the global step after it.
    """
    model.train()
    if frozen is not None:
        frozen.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in tracker.progress(loader, desc=f"epoch {epoch}", leave=False):
        inputs, labels = inputs.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        logits = model(inputs)  # [B,K]
        loss = F.cross_entropy(logits, labels)
        check_finite(loss.detach(), {"cross_entropy": loss.detach()}, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hits = (logits.argmax(1) == labels).sum().item()
        total_loss += loss.item() * len(labels)
        correct += hits
        seen += len(labels)
        tracker.scalars({"loss": loss.item(), "acc": hits / len(labels),
                         "lr": optimizer.param_groups[-1]["lr"]}, step, prefix="train/")
        step += 1
    return {"loss": total_loss / seen, "acc": correct / seen}, step


def video_probs(clip_logits: Tensor, counts: Tensor) -> Tensor:
    """Softmax of each clip, averaged over the clips (windows x views) of each video.

    ``clip_logits [sum(counts), K]`` holds video 0's clips, then video 1's, ...; returns ``[V, K]``.
    """
    probs = clip_logits.float().softmax(1)  # [M,K]
    return torch.stack([chunk.mean(0) for chunk in probs.split(counts.tolist())])  # [V,K]


@torch.no_grad()
def predict_videos(model: nn.Module, loader: DataLoader, dev: torch.device, chunk: int,
                   tracker: Tracker | None = None) -> tuple[Tensor, Tensor]:
    """Video-level class probabilities ``[V, K]`` and labels ``[V]``; clips forwarded ``chunk`` at a time.

    ``loader`` yields what :func:`collate_videos` makes; a video's clips are only materialised in float
    ``chunk`` at a time (``clips.split(chunk)``)."""
    model.eval()
    probs, labels = [], []
    batches = tracker.progress(loader, desc="test", leave=False) if tracker else loader
    for clips, video_labels, counts in batches:
        logits = torch.cat([model(part.to(dev, non_blocking=True)).cpu() for part in clips.split(chunk)])  # [M,K]
        probs.append(video_probs(logits, counts))
        labels.append(video_labels)
    return torch.cat(probs), torch.cat(labels)


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
        raise RuntimeError(f"the checkpoint does not match the model: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}; resume with the same script and flags as the run that wrote it")
    model.load_state_dict(state, strict=False)


def drop_later_epochs(log_file: Path, epoch: int) -> None:
    """Keep the lines of ``log.jsonl`` up to ``epoch`` (1-based), which a resume from that epoch's
    checkpoint continues; later ones were written by the interrupted run and are written again."""
    if not log_file.is_file():
        return
    lines = log_file.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["epoch"] <= epoch]
    if kept != lines:
        with atomic_write(log_file, "w", encoding="utf-8") as f:
            f.writelines(kept)


def fit(cfg: Protocol, model: nn.Module, train_set: Dataset, val_set: Dataset | None,
        optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, tracker: Tracker,
        state: dict | None, dev: torch.device, frozen: nn.Module | None = None) -> dict:
    """Train for ``cfg.epochs`` epochs, resuming from ``state``; leave the weights to test in ``model``.

    Reads ``out_dir``, ``epochs``, ``batch_size``, ``workers``, ``seed`` and ``flags`` of ``cfg``.

    ``frozen``: a submodule that must not change; checked after the first epoch, and left out of the
    checkpoints (``last.pth``, ``best.pth``), which hold only what training changes. After a resume,
    TensorBoard scalars and ``log.jsonl`` equal an uninterrupted run's. With a validation
    set, each epoch is scored on it, ``best.pth`` keeps the best one and its weights are the ones
    tested. Returns ``{'epoch': tested epoch (1-based), 'selected_by': 'last epoch'|'validation top1', 'val_top1'}``.
    """
    out_dir = Path(cfg.out_dir)
    model.to(dev)
    start, step, best = 0, 0, {"epoch": 0, "val_top1": None}
    if state:
        load_trained_state(model, state["model"], frozen)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, step, best = state["epoch"], state["step"], state["best"]
        drop_later_epochs(out_dir / "log.jsonl", start)
    loader = train_loader(train_set, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed)
    val = video_loader(val_set, workers=cfg.workers) if val_set is not None else None
    before = snapshot(frozen) if frozen is not None and start == 0 else None
    for epoch in range(start, cfg.epochs):
        loader.sampler.set_epoch(epoch)
        stats, step = train_epoch(model, loader, optimizer, dev, tracker, epoch, step, frozen)
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
        # the epoch's logs reach the disk before its checkpoint: a resume from an earlier one drops them
        tracker.epoch(record)
        if tracker.writer is not None:
            tracker.writer.flush()
        save_checkpoint({"model": trained_state(model, frozen), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step, "best": best,
                         "rng": rng_state(), "args": dict(cfg.flags)}, out_dir / "last.pth")
        tracker.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    if val is None:
        return {"epoch": cfg.epochs, "selected_by": "last epoch", "val_top1": None}
    load_trained_state(model, load_checkpoint(out_dir / "best.pth")["model"], frozen)
    tracker.print(f"testing epoch {best['epoch']} (best validation top-1 {best['val_top1']:.4f})")
    return {"epoch": best["epoch"], "selected_by": "validation top1", "val_top1": best["val_top1"]}


def test_and_report(cfg: Protocol, model: nn.Module, test_set: Dataset, dev: torch.device, tracker: Tracker,
                    extra: dict) -> dict:
    """Video-level test; write ``results.json`` and ``confusion.png`` to ``cfg.out_dir``; return the results."""
    names = cfg.class_name_list()
    probs, labels = predict_videos(model, video_loader(test_set, workers=cfg.workers), dev, cfg.batch_size, tracker)
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


def exit_on_user_error(call: Callable[[], dict]) -> dict:
    """``call()`` for a command line: a bad CSV, checkpoint or frame ends in one ``error: ...`` line, status 1."""
    try:
        return call()
    except (CheckpointError, DataError, FrameDecodeError) as e:
        raise SystemExit(f"error: {e}") from e
