"""Video-level scores of a downstream evaluation: top-k, per-class accuracy, confusion matrix."""
from __future__ import annotations

import torch
from torch import Tensor


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
