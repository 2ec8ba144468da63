"""Watching a pretraining run: is the representation getting better, and is it collapsing?

- :func:`effective_rank` (RankMe, Garrido et al. 2023): exp of the entropy of the normalised
  singular values of a feature matrix; it falls to a handful when features collapse onto a few
  directions, and tracks downstream accuracy without labels;
- :func:`embedding_stats`: that rank and the mean per-dimension standard deviation of the
  L2-normalised rows (0 for a complete collapse; about ``1/sqrt(width)`` for rows spread evenly
  over the sphere);
- :func:`knn_top1`: the weighted kNN classifier of DINO's evaluation (cosine similarity, the ``k``
  nearest train features vote with weight ``exp(sim / temperature)``);
- :func:`standardize`, :func:`fit_logistic_regression`, :func:`linear_probe_top1`: the usual linear
  probe on cached features (each dimension standardised with the train set's mean and standard
  deviation, then a multinomial logistic regression with a fixed L2 penalty, fitted by L-BFGS from
  zero). Cosine kNN reads a representation spread over few directions poorly: a class difference
  along a direction of small variance is drowned by the large ones. The probe weighs every direction
  by what it tells, so it reads such a representation well;
- :class:`KnnMonitor`: pooled backbone features of one centred clip per video of a labelled train
  and test CSV, extracted without gradient in eval mode (every rank extracts its share under
  ``torch.distributed``; the features are gathered), then kNN top-1 (raw and standardised features),
  the linear probe and the collapse statistics;
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


def standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """``train [N, D]`` and ``test [Q, D]`` in float64, every dimension minus the mean of ``train`` and divided by
    the standard deviation of ``train`` (over its ``N`` rows, population: divided by ``N``).

    A dimension constant over ``train`` (its standard deviation at most ``1e-12`` times its largest absolute
    value, e.g. a dead ReLU channel) is only centred: it is 0 on ``train``, never inf or NaN.
    """
    if len(train) == 0:
        raise ValueError("standardize needs at least one train row")
    train, test = train.detach().double(), test.detach().double()
    mean = train.mean(0)  # [D]
    std = train.std(0, correction=0)  # [D]
    std = torch.where(std > 1e-12 * train.abs().amax(0), std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def fit_logistic_regression(x: Tensor, labels: Tensor, classes: int, *, iters: int = 100,
                            l2: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression of ``labels [N]`` (in ``0 .. classes-1``) on ``x [N, D]``: ``(W [K, D], b [K])``.

    Minimises ``mean_i cross_entropy(W x_i + b, y_i) + l2 / 2 * ||W||^2`` (the bias is not penalised; with
    ``l2 > 0`` the minimum is unique) by ``torch.optim.LBFGS`` (strong-Wolfe line search, at most ``iters``
    iterations) from ``W = 0, b = 0``, in float64 on the CPU: the same inputs give the same result.
    ``l2 = 1e-3`` is scikit-learn's default penalty (``C = 1``) for 1,000 samples written in this form.
    """
    if len(x) == 0:
        raise ValueError("logistic regression needs at least one row")
    x, y = x.detach().double().cpu(), labels.detach().long().cpu()  # [N,D], [N]
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)  # [K,D]
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)  # [K]
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iters, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # the monitor may be called under no_grad
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def linear_probe_top1(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, *, iters: int = 100,
                      l2: float = 1e-3) -> float:
    """Top-1 accuracy on ``test [Q, D]`` of :func:`fit_logistic_regression` (``iters``, ``l2``) fitted on
    ``train [N, D]``, both :func:`standardize`-d with the train statistics; classes: the largest label + 1."""
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"a linear probe needs train and test features, got {len(train)} and {len(test)}")
    train, test = standardize(train, test)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight, bias = fit_logistic_regression(train, train_labels, classes, iters=iters, l2=l2)
    predicted = (test @ weight.T + bias).argmax(1)  # [Q]
    return (predicted == test_labels.cpu()).double().mean().item()


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
    """kNN top-1, linear-probe top-1 and collapse statistics of a backbone on labelled ``train_csv`` / ``test_csv`` videos.

    One centred clip per video (``datasets.CentreClipDataset``: ``seq`` frames, ``img_dim`` pixels),
    ``batch_size`` clips per forward pass, ``workers`` loader processes. Call it on every rank: each
    extracts its share (videos ``rank::world_size``) and all features are gathered; rank 0 scores them
    and every rank gets its result. The scores are of the pooled last map (``high``); each other level
    named in ``levels`` adds its kNN top-1 as ``knn_top1_<level>`` (where in the backbone the classes are
    told). The probe is :func:`linear_probe_top1` with ``probe_iters`` and ``probe_l2``.
    """

    def __init__(self, train_csv: str, test_csv: str, *, seq: int, img_dim: int, batch_size: int, workers: int,
                 k: int = 20, temperature: float = 0.07, levels: tuple[str, ...] = (), probe_iters: int = 100,
                 probe_l2: float = 1e-3):
        from datasets import CentreClipDataset

        self.sets = {name: CentreClipDataset(csv_file, seq=seq, img_dim=img_dim)
                     for name, csv_file in (("train", train_csv), ("test", test_csv))}
        unknown = set(levels) - set(LEVELS)
        if unknown:
            raise ValueError(f"levels {sorted(unknown)}: choose from {LEVELS}")
        self.levels = ("high", *(level for level in levels if level != "high"))
        self.batch_size, self.workers, self.k, self.temperature = batch_size, workers, k, temperature
        self.probe_iters, self.probe_l2 = probe_iters, probe_l2

    def _features(self, dataset, backbone: nn.Module, device: torch.device) -> tuple[dict[str, Tensor], Tensor]:
        rank, world = distributed.get_rank(), distributed.get_world_size()
        share = list(range(rank, len(dataset), world))
        loader = DataLoader(Subset(dataset, share), batch_size=self.batch_size, num_workers=self.workers,
                            **loader_kwargs(self.workers))
        feats, labels = pooled_features(backbone, loader, device, self.levels)
        # a collective: every rank runs the monitor at the same points (train.py: step 0 and the epochs that
        # --monitor_every picks from the shared epoch counter), and extracts both sets
        parts = distributed.all_gather_object((share, feats, labels))  # every rank's share, in rank order
        order = torch.tensor([i for indices, _, _ in parts for i in indices]).argsort()
        return ({level: torch.cat([f[level] for _, f, y in parts if len(y)])[order] for level in self.levels},
                torch.cat([y for _, _, y in parts])[order])

    def _scores(self, train: dict[str, Tensor], train_labels: Tensor, test: dict[str, Tensor],
                test_labels: Tensor) -> dict[str, float]:
        knn = {level: knn_top1(train[level], train_labels, test[level], test_labels, k=self.k,
                               temperature=self.temperature) for level in self.levels}
        train_std, test_std = standardize(train["high"], test["high"])
        knn_std = knn_top1(train_std, train_labels, test_std, test_labels, k=self.k, temperature=self.temperature)
        tic = time.perf_counter()
        probe = linear_probe_top1(train["high"], train_labels, test["high"], test_labels, iters=self.probe_iters,
                                  l2=self.probe_l2)
        probe_seconds = time.perf_counter() - tic
        stats = embedding_stats(torch.cat([train["high"], test["high"]]))
        return {"knn_top1": knn["high"], "knn_top1_std": knn_std, "probe_top1": probe, "erank": stats["erank"],
                "std": stats["std"], "width": train["high"].shape[1], "rows": len(train_labels) + len(test_labels),
                "probe_seconds": probe_seconds, **{f"knn_top1_{level}": knn[level] for level in self.levels
                                                   if level != "high"}}

    def __call__(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        """The backbone's scores; the backbone is left in the mode it was in. Keys:

        - ``knn_top1``: :func:`knn_top1` (cosine, ``k``, ``temperature``) of the pooled features;
        - ``knn_top1_std``: the same on the features :func:`standardize`-d with the train set's statistics;
        - ``probe_top1``: :func:`linear_probe_top1` (standardised features, logistic regression);
        - ``erank``, ``std``: :func:`embedding_stats` of the pooled features of both sets;
        - ``width``, ``rows``: feature width and the number of videos of both sets (together they bound
          the effective rank);
        - ``seconds``: the whole call; ``probe_seconds``: the probe's fit and test alone;
        - ``knn_top1_<level>`` for the other ``levels``.
        """
        tic = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        try:
            train, train_labels = self._features(self.sets["train"], backbone, device)
            test, test_labels = self._features(self.sets["test"], backbone, device)
        finally:
            backbone.train(was_training)
        # rank 0 scores the gathered features (the probe once, not on every rank); the others take its result
        scores = self._scores(train, train_labels, test, test_labels) if distributed.is_main_process() else None
        scores = distributed.all_gather_object(scores)[0]  # a collective on every rank: only what it holds differs
        return {**scores, "seconds": time.perf_counter() - tic}

    def log(self, backbone: nn.Module, device: torch.device, tracker, step: int) -> dict[str, float]:
        """The scores of :meth:`__call__` (a collective: every rank calls it at the same step), logged to
        ``tracker`` (an ``engine.tracking.Tracker``) at ``step`` as ``monitor/<key>``; returned as
        ``monitor_<key>``, their names in ``log.jsonl``."""
        scores = self(backbone, device)
        tracker.scalars({f"monitor/{k}": v for k, v in scores.items()}, step)
        return {f"monitor_{k}": v for k, v in scores.items()}


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


def collapse_warning(rank: float | None, width: int, probe: float | None, probe_at_0: float | None) -> str | None:
    """The warning for pooled features of effective ``rank`` below 5% of the ``width`` they could span;
    None when the rank is higher, or when the monitor's probe reads more than at step 0 (a representation
    can learn on few directions: docs/pretraining.md 'Watching a run')."""
    if rank is None or rank >= 0.05 * width:
        return None
    if probe is not None and probe_at_0 is not None and probe > probe_at_0:
        return None
    probed = "" if probe is None else f", the probe's top-1 {probe:.3f}" + (
        "" if probe_at_0 is None else f" (at step 0: {probe_at_0:.3f})")
    return (f"warning: the pooled backbone features have collapsed: effective rank {rank:.1f} of {width} possible "
            f"(below 5%){probed}; see docs/pretraining.md 'Watching a run' for what to try")


def collapse_in(summary: dict, reference: dict, channels: int, batch: int) -> str | None:
    """:func:`collapse_warning` for an epoch's ``summary``: the monitor's rank and width when it ran, else the
    training batch's (the pooled features of its 2 x ``batch`` clips, ``channels`` wide)."""
    if "monitor_erank" in summary:
        rank, width = summary["monitor_erank"], min(summary["monitor_width"], summary["monitor_rows"])
    else:
        rank, width = summary.get("erank_pooled"), min(channels, 2 * batch)
    return collapse_warning(rank, width, summary.get("monitor_probe_top1"), reference.get("monitor_probe_top1"))
