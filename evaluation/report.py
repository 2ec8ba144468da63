"""What an evaluation writes and prints: results as JSON and the confusion matrix as a PNG, each atomically;
the one line a run starts with and the one line of each epoch (everything else goes to ``log.jsonl``,
TensorBoard and ``args.json``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from datasets.index import DataError
from engine.files import atomic_write
from evaluation.protocol import Protocol


def read_class_names(path: str | os.PathLike, num_classes: int) -> list[str]:
    """Class names in label order, one per line; a leading index (UCF-101's ``classInd.txt``) is dropped.

    Raises ``DataError`` when the file cannot be read or holds another number of names."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except OSError as e:
        raise DataError(f"--class_names {path}: cannot read it ({e})") from e
    names = [line.split(maxsplit=1)[1] if line.split()[0].isdigit() and len(line.split()) > 1 else line
             for line in lines]
    if len(names) != num_classes:
        raise DataError(f"--class_names {path}: {len(names)} names for {num_classes} classes (the CSV "
                        "labels' max + 1); give one name per class, in label order")
    return names


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def save_confusion_png(confusion: list[list[int]], class_names: list[str], path: str | os.PathLike,
                       title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) as a PNG, atomically."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts = torch.tensor(confusion, dtype=torch.float64)  # [K,K]
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)  # [K,K] rows sum to 1 (or 0 when empty)
    k = len(class_names)
    size = min(4 + 0.15 * k, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rates.numpy(), cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    font = max(3, min(8, 400 // max(k, 1)))
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(k), class_names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=150)
    plt.close(fig)
    return path


def run_line(protocol: str, cfg: Protocol, *, train: int, test: int, held_out: int = 0, trains: bool = True) -> str:
    """What a downstream run does, in a few words: ``protocol`` of the checkpoint on how many videos (``train``,
    ``held_out`` train videos kept aside to choose an epoch, ``test``) and, when it ``trains``, its epochs, batch
    and lr."""
    videos = f"{train} train" + (f" + {held_out} held-out" if held_out else "") + f" / {test} test videos"
    schedule = f": {epoch_count(cfg.epochs)}, batch {cfg.batch_size}, lr {cfg.lr:g}" if trains else ""
    return f"{protocol} of {cfg.checkpoint_name} on {videos} ({cfg.classes} classes){schedule}"


def epoch_count(n: int) -> str:
    """``n`` epoch(s), in words."""
    return f"{n} epoch" + ("" if n == 1 else "s")


def epoch_line(epoch: int, epochs: int, loss: float, acc: float, seconds: float, val_top1: float | None = None) -> str:
    """An epoch's line on the terminal: ``epoch`` of ``epochs`` (1-based), the mean loss, the training
    accuracy, the validation top-1 when there is one, and the epoch's wall time."""
    val = "" if val_top1 is None else f", val top-1 {val_top1:.3f}"
    return f"epoch {epoch}/{epochs}: loss {loss:.4f}, acc {acc:.3f}{val} ({seconds:.1f} s)"
