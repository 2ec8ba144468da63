"""Nearest-neighbour video retrieval: test videos query train videos, recall@k.

Protocol (CoCLR's, with a video-level gallery by default): a video's feature is the mean of its
clips' L2-normalised pooled backbone features; each set (queries, gallery) is centred by its own
mean and L2-normalised; similarity is the cosine. Recall@k is the fraction of queries for which at
least one of the k most similar gallery videos has the query's class (k is capped at the gallery
size). Ties in similarity are broken by gallery order — the earlier gallery video ranks first — so
the result never depends on the sort implementation.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.tracking import Tracker
from evaluation.protocol import Protocol
from evaluation.report import write_json

RECALL_KS = (1, 5, 10, 20, 50)


def video_means(clip_feats: Tensor, counts: Tensor) -> Tensor:
    """Mean of each video's L2-normalised clip features.

    ``clip_feats [sum(counts), C]`` holds the clips of video 0, then video 1, ...;
    ``counts [V]`` the number of clips per video. Returns ``[V, C]``.
    """
    clips = F.normalize(clip_feats.float(), dim=1)  # [M,C]
    return torch.stack([chunk.mean(0) for chunk in clips.split(counts.tolist())])  # [V,C]


def one_clip_per_video(clip_feats: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """One clip feature per video, drawn uniformly among its clips (CoCLR's gallery). ``[V, C]``."""
    starts = torch.cumsum(counts, 0) - counts  # [V] index of each video's first clip
    offsets = (torch.rand(len(counts), generator=generator) * counts).long()  # [V] in [0, count)
    return F.normalize(clip_feats[starts + offsets].float(), dim=1)  # [V,C]


def centre_normalise(feats: Tensor) -> Tensor:
    """Subtract the set's mean feature, then L2-normalise each row. ``[V, C] -> [V, C]``."""
    return F.normalize(feats - feats.mean(0, keepdim=True), dim=1)


def rank_gallery(query: Tensor, gallery: Tensor) -> Tensor:
    """Gallery indices sorted by decreasing cosine similarity, ties in gallery order. ``[Q, G]``."""
    sim = centre_normalise(query) @ centre_normalise(gallery).T  # [Q,G]
    return torch.sort(sim, dim=1, descending=True, stable=True).indices  # [Q,G]


def recall_at_k(query: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor,
                ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """``{'recall@k': fraction of queries with a same-class video among their k nearest}``.

    ``query [Q, C]`` and ``gallery [G, C]`` are video features (before centring); labels are
    ``[Q]`` and ``[G]`` class indices. A ``k`` above ``G`` counts the whole gallery.
    """
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError(f"retrieval needs at least one query and one gallery video "
                         f"(got {len(query)} and {len(gallery)})")
    order = rank_gallery(query, gallery)  # [Q,G]
    same = gallery_labels[order] == query_labels[:, None]  # [Q,G] True where the ranked video shares the class
    return {f"recall@{k}": same[:, :k].any(1).double().mean().item() for k in ks}


def format_recall_table(recalls: dict[str, float]) -> str:
    """Two aligned lines: the ``R@k`` names and the recalls in percent."""
    names = [name.replace("recall@", "R@") for name in recalls]
    values = [f"{100 * v:.2f}" for v in recalls.values()]
    widths = [max(len(n), len(v)) for n, v in zip(names, values)]
    return "\n".join(["  ".join(s.rjust(w) for s, w in zip(row, widths)) for row in (names, values)])


def retrieval_report(cfg: Protocol, features: dict[str, dict[str, Tensor]], tracker: Tracker, gallery: str) -> dict:
    """Test videos query train videos (``features`` of ``evaluation.features.cached_features``); print the
    recalls and write them to ``cfg.out_dir/results.json``; return them.

    ``gallery``: ``'video'`` (each train video: the mean of its clips) or ``'one_clip'`` (one random clip,
    drawn with ``cfg.seed``)."""
    train, test = features["train"], features["test"]
    if gallery == "video":
        keys = video_means(train["feats"], train["counts"])  # [G,C]
    else:
        keys = one_clip_per_video(train["feats"], train["counts"], torch.Generator().manual_seed(cfg.seed))
    recalls = recall_at_k(video_means(test["feats"], test["counts"]), test["labels"], keys, train["labels"])
    path = write_json({**recalls, "gallery": gallery, "test_videos": len(test["labels"]),
                       "train_videos": len(train["labels"]), "checkpoint": cfg.checkpoint_name,
                       "args": dict(cfg.flags)}, Path(cfg.out_dir) / "results.json")
    tracker.print(f"retrieval of {len(test['labels'])} test videos among {len(train['labels'])} train videos "
                  f"(recall, %) -> {path}:\n{format_recall_table(recalls)}")
    return recalls
