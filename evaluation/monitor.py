"""Watching a pretraining run: is the representation getting better, and is it collapsing?

- :func:`effective_rank` (RankMe, Garrido et al. 2023): exp of the entropy of the normalised
  singular values of a feature matrix; it falls to a handful when features collapse onto a few
  directions, and tracks downstream accuracy without labels;
- :func:`embedding_stats`: that rank and the mean per-dimension standard deviation of the
  L2-normalised rows (0 for a complete collapse; about ``1/sqrt(width)`` for rows spread evenly
  over the sphere);
- :func:`knn_top1`: the weighted kNN classifier of DINO's evaluation (cosine similarity, the ``k``
  nearest train features vote with weight ``exp(sim / temperature)``);
- :class:`KnnMonitor`: pooled backbone features of one centred clip per video of a labelled train
  and test CSV, extracted without gradient in eval mode (every rank extracts its share under
  ``torch.distributed``; the features are gathered), then kNN top-1 and the collapse statistics;
- :func:`video_identity`: can the features find a video again from a later, disjoint clip of it
  (:func:`same_video_top1`)? With ``static=True`` the clips are frozen frames, so only appearance
  can do it: a diagnostic of whether an instance-level objective has an appearance shortcut.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from datasets.loader import loader_kwargs
from engine import distributed
from models.backbones import LEVELS


def effective_rank(x: Tensor) -> float:
    """exp(entropy of p), p = singular values of ``x [N, D]`` divided by their sum; in [1, min(N, D)].

    0 for an all-zero matrix (no direction at all).
    """
    s = torch.linalg.svdvals(x.detach().double())  # [min(N,D)]
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def embedding_stats(z: Tensor) -> dict[str, float]:
    """``{'erank', 'std'}`` of the rows of ``z [N, D]`` after L2 normalisation (see the module docstring)."""
    zn = F.normalize(z.detach().float(), dim=1)  # [N,D]
    return {"erank": effective_rank(zn), "std": zn.std(0).mean().item() if len(zn) > 1 else 0.0}


def knn_top1(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, *, k: int = 20,
             temperature: float = 0.07, chunk: int = 1024) -> float:
    """Top-1 accuracy of the weighted kNN classifier (DINO's): ``train [N, D]``, ``test [Q, D]``, labels ``[N]``, ``[Q]``.

    Features are L2-normalised; each test feature's ``min(k, N)`` most similar train features vote for
    their class with weight ``exp(cosine / temperature)``; the class with the largest vote wins (ties:
    the lower class index). Test features are scored ``chunk`` at a time.
    """
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"kNN needs train and test features, got {len(train)} and {len(test)}")
    train_n, test_n = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    right = 0
    for start in range(0, len(test_n), chunk):
        sim = test_n[start:start + chunk] @ train_n.T  # [q,N]
        top, idx = sim.topk(k, dim=1)  # [q,k]
        votes = torch.zeros(len(sim), classes).scatter_add_(1, train_labels[idx], (top / temperature).exp())  # [q,K]
        right += int((votes.argmax(1) == test_labels[start:start + chunk]).sum())
    return right / len(test_n)


@torch.no_grad()
def pooled_features(backbone: nn.Module, loader: DataLoader, device: torch.device,
                    levels: tuple[str, ...] = ("high",)) -> tuple[dict[str, Tensor], Tensor]:
    """Globally pooled maps ``{level: [N, C_level]}`` (float32, CPU) of the clips of ``loader`` for
    each of ``levels`` (``low``, ``mid``, ``high``: layer2/3/4 of r3d18), and their labels ``[N]``."""
    feats, labels = {level: [] for level in levels}, []
    for clips, y in loader:  # [b,3,T,H,W]
        maps = dict(zip(LEVELS, backbone(clips.to(device, non_blocking=True))))
        for level in levels:
            feats[level].append(maps[level].mean(dim=(2, 3, 4)).float().cpu())
        labels.append(torch.as_tensor(y))
    if not labels:
        return {level: torch.empty(0, 0) for level in levels}, torch.empty(0, dtype=torch.long)
    return {level: torch.cat(f) for level, f in feats.items()}, torch.cat(labels)


def same_video_top1(query: Tensor, keys: Tensor) -> float:
    """Rows ``i`` of ``query [N, D]`` and ``keys [N, D]`` are two clips of video ``i``: the fraction of
    videos whose query is most cosine-similar to their own key among all ``N`` (chance: ``1/N``)."""
    if len(query) != len(keys) or len(query) == 0:
        raise ValueError(f"need as many queries as keys, at least one: got {len(query)} and {len(keys)}")
    sim = F.normalize(query.float(), dim=1) @ F.normalize(keys.float(), dim=1).T  # [N,N]
    return (sim.argmax(1) == torch.arange(len(sim))).float().mean().item()


@torch.no_grad()
def video_identity(backbone: nn.Module, csv_file, *, seq: int, img_dim: int, batch_size: int, workers: int,
                   device: torch.device, static: bool = False) -> float:
    """:func:`same_video_top1` of the pooled last map (eval mode, centre crop) between each video's
    first and last ``seq`` frames (disjoint when the video has at least ``2 * seq``); with ``static``
    each clip is its first frame repeated (``datasets.CentreClipDataset(static=True)``): no motion,
    only what the video looks like. One process; the backbone is left in the mode it was in.
    A video with fewer than ``2 * seq`` frames is an error (its two clips would overlap)."""
    from datasets import CentreClipDataset, DataError

    sets = [CentreClipDataset(csv_file, seq=seq, img_dim=img_dim, window=window, static=static)
            for window in ("first", "last")]
    short = [video for video in sets[0].videos if video.frames < 2 * seq]
    if short:
        raise DataError(f"{short[0].path}: {short[0].frames} frames, fewer than 2 x seq = {2 * seq}, so its first and "
                        f"last clips overlap ({len(short)} such videos in {csv_file}); use a smaller seq")
    was_training = backbone.training
    backbone.eval()
    try:
        feats = []
        for dataset in sets:
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, **loader_kwargs(workers))
            feats.append(pooled_features(backbone, loader, device)[0]["high"])
    finally:
        backbone.train(was_training)
    return same_video_top1(*feats)


class KnnMonitor:
    """kNN top-1 and collapse statistics of a backbone on labelled ``train_csv`` / ``test_csv`` videos.

    One centred clip per video (``datasets.CentreClipDataset``: ``seq`` frames, ``img_dim`` pixels),
    ``batch_size`` clips per forward pass, ``workers`` loader processes. Call it on every rank: each
    extracts its share (videos ``rank::world_size``) and all features are gathered; every rank gets
    the same result. The scores are of the pooled last map (``high``); each other level named in
    ``levels`` adds its kNN top-1 as ``knn_top1_<level>`` (where in the backbone the classes are told).
    """

    def __init__(self, train_csv: str, test_csv: str, *, seq: int, img_dim: int, batch_size: int, workers: int,
                 k: int = 20, temperature: float = 0.07, levels: tuple[str, ...] = ()):
        from datasets import CentreClipDataset, DataError

        self.sets = {name: CentreClipDataset(csv_file, seq=seq, img_dim=img_dim)
                     for name, csv_file in (("train", train_csv), ("test", test_csv))}
        unknown = set(levels) - set(LEVELS)
        if unknown:
            raise ValueError(f"levels {sorted(unknown)}: choose from {LEVELS}")
        self.levels = ("high", *(level for level in levels if level != "high"))
        self.batch_size, self.workers, self.k, self.temperature = batch_size, workers, k, temperature

    def _features(self, dataset, backbone: nn.Module, device: torch.device) -> tuple[dict[str, Tensor], Tensor]:
        rank, world = distributed.get_rank(), distributed.get_world_size()
        share = list(range(rank, len(dataset), world))
        loader = DataLoader(Subset(dataset, share), batch_size=self.batch_size, num_workers=self.workers,
                            **loader_kwargs(self.workers))
        feats, labels = pooled_features(backbone, loader, device, self.levels)
        parts = distributed.all_gather_object((share, feats, labels))  # every rank's share, in rank order
        order = torch.tensor([i for indices, _, _ in parts for i in indices]).argsort()
        return ({level: torch.cat([f[level] for _, f, y in parts if len(y)])[order] for level in self.levels},
                torch.cat([y for _, _, y in parts])[order])

    def __call__(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        """``{'knn_top1', 'erank', 'std', 'width', 'rows', 'seconds'}`` (plus ``knn_top1_<level>`` for the
        other ``levels``); the backbone is left in the mode it was in.

        ``rows`` is the number of videos of both sets: with ``width`` it bounds the effective rank."""
        tic = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        try:
            train, train_labels = self._features(self.sets["train"], backbone, device)
            test, test_labels = self._features(self.sets["test"], backbone, device)
        finally:
            backbone.train(was_training)
        knn = {level: knn_top1(train[level], train_labels, test[level], test_labels, k=self.k,
                               temperature=self.temperature) for level in self.levels}
        stats = embedding_stats(torch.cat([train["high"], test["high"]]))
        return {"knn_top1": knn["high"], "erank": stats["erank"], "std": stats["std"], "width": train["high"].shape[1],
                "rows": len(train_labels) + len(test_labels), "seconds": time.perf_counter() - tic,
                **{f"knn_top1_{level}": knn[level] for level in self.levels if level != "high"}}


def batch_health(out: dict[str, Tensor]) -> dict[str, float]:
    """Collapse statistics of one training batch's embeddings: ``erank_<level>`` and ``std_<level>``.

    Levels: the contrast embeddings ``high``, ``mid``, ``low`` (forward rows, clips a and b) and,
    when the model returns it, ``pooled`` (the pooled backbone features of clips a and b).
    """
    batch = out["high"].shape[0]
    health = {}
    for level in ("high", "mid", "low", "pooled"):
        if level in out:
            stats = embedding_stats(out[level][:batch, :2].flatten(0, 1))  # [2B, C]
            health.update({f"erank_{level}": stats["erank"], f"std_{level}": stats["std"]})
    return health
