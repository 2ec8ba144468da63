"""The downstream protocol's data: inputs checked up front, the held-out split, datasets and loaders.

- :func:`read_inputs` reads and checks both CSVs, the number of classes and the class names before
  anything is written;
- :func:`split_train_val` holds ``--val_fraction`` of the *train* videos out to choose an epoch
  (UCF-101 by group);
- :func:`video_datasets`: train clips with CoCLR's evaluation augmentation, held-out and test videos
  covered by half-overlapping windows x views;
- :func:`train_loader` (seeded per sample, resumable inside an epoch) and :func:`video_loader` (one
  video per item).
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from datasets.index import DataError, read_csv
from datasets.loader import loader_kwargs
from engine.sampling import ResumableSampler, SeededSamples
from evaluation.protocol import NUM_CLASSES, Protocol
from evaluation.report import read_class_names


def read_inputs(cfg: Protocol) -> tuple[Protocol, list[int], list[int], int]:
    """Read and check every input named by ``cfg`` before anything is written; raise ``DataError``.

    Both CSVs (3 columns, at least one row, frame folders present), the number of classes and
    ``class_names``. The classes are the labels' max + 1 over both CSVs; an explicit ``num_classes``
    or ``dataset`` must equal it (a label beyond it is an error naming its file and line).
    Returns ``cfg`` with ``num_classes`` set, the (train, validation) indices of the train videos
    (see :func:`split_train_val`) and the number of test videos.
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
    return cfg, train_idx, val_idx, len(rows[cfg.test_csv])


def class_names(cfg: Protocol) -> list[str]:
    """Class names in label order, from the ``class_names`` file or the class indices."""
    k = cfg.classes
    return read_class_names(cfg.class_names, k) if cfg.class_names else [str(c) for c in range(k)]


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
    """Shuffled, seeded per (seed, epoch, index); call ``loader.sampler.set_epoch(epoch, skip)`` before each epoch
    (``skip``: samples already trained on, when resuming inside the epoch)."""
    if len(dataset) < 2:
        raise DataError(f"training needs at least 2 samples, got {len(dataset)}; check --train_csv")
    # the loader's own generator: creating an iterator then draws nothing from torch's global one, whose
    # state a checkpoint saved in the middle of an epoch restores (dropout draws from it)
    return DataLoader(SeededSamples(dataset, seed, strict=True), batch_size=batch_size,
                      sampler=ResumableSampler(dataset, seed=seed), collate_fn=_drop_count,
                      num_workers=workers, drop_last=len(dataset) > batch_size,
                      generator=torch.Generator().manual_seed(seed), **loader_kwargs(workers))


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
