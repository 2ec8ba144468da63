"""What a downstream evaluation reports: video-level top-k, per-class accuracy, confusion matrix.

Outputs are written atomically (temporary file in the destination folder, then ``os.replace``).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor


def read_class_names(path: str | os.PathLike, num_classes: int) -> list[str]:
    """Class names in label order, one per line; a leading index (UCF-101's ``classInd.txt``) is dropped."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise ValueError(f"--class_names {path}: cannot read it ({e})") from e
    names = [line.split(maxsplit=1)[1] if line.split()[0].isdigit() and len(line.split()) > 1 else line
             for line in lines]
    if len(names) != num_classes:
        raise ValueError(f"--class_names {path}: {len(names)} names for {num_classes} classes; "
                         "give one name per class, in label order, or set --num_classes")
    return names


def topk_correct(probs: Tensor, labels: Tensor, k: int) -> Tensor:
    """Whether each label is among the ``k`` highest scores: ``probs [V,K]``, ``labels [V]`` -> bool ``[V]``."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices  # [V,k]
    return (top == labels[:, None]).any(1)


def confusion_matrix(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts ``[true class, predicted class]`` as a ``[K, K]`` int64 tensor."""
    flat = labels.long() * num_classes + pred.long()  # [V]
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy_report(probs: Tensor, labels: Tensor, class_names: list[str]) -> dict:
    """``top1``, ``top5`` (fractions), ``per_class`` accuracy (None for a class without test videos), ``confusion``."""
    num_classes = len(class_names)
    confusion = confusion_matrix(probs.argmax(1), labels, num_classes)  # [K,K]
    totals = confusion.sum(1)
    per_class = {name: (confusion[c, c].item() / totals[c].item() if totals[c] else None)
                 for c, name in enumerate(class_names)}
    return {
        "top1": topk_correct(probs, labels, 1).double().mean().item(),
        "top5": topk_correct(probs, labels, 5).double().mean().item(),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with _atomic(path, "w") as f:
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
    with _atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=150)
    plt.close(fig)
    return path


@contextmanager
def _atomic(path: Path, mode: str):
    """Open a temporary file next to ``path``; move it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
