"""Pooled backbone features of every clip of every video, extracted once and cached in ``out_dir``.

Used by the fast linear probe (``eval_linear.py --features``: the linear layer is trained on the
cached features, one random clip per video and epoch) and by retrieval. Clips are the deterministic
test clips (half-overlapping windows x ``--test_views``), for the train and the test videos alike,
so no augmentation is involved.

The cache file is named by a hash of what determines its content — the checkpoint's bytes (or the
random-init seed), the CSV files' resolved paths and bytes, the architecture, clip length, size and
views — and the full description is stored inside and compared on load, so a stale cache is never
reused. (Editing the frame images without touching the CSVs is not detected: delete the cache.)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.interrupt import GracefulStop
from engine.tracking import Tracker
from evaluation.data import video_loader
from evaluation.protocol import Protocol


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_description(cfg: Protocol) -> dict:
    """Everything the cached features depend on."""
    weights = f"sha256:{file_sha256(cfg.pretrained)}" if cfg.pretrained else f"random_init:seed={cfg.seed}"
    return {
        "weights": weights, "arch": cfg.arch, "seq": cfg.seq, "img_dim": cfg.img_dim, "views": cfg.test_views,
        **{name: {"path": str(Path(getattr(cfg, name)).resolve()), "sha256": file_sha256(getattr(cfg, name))}
           for name in ("train_csv", "test_csv")},
    }


def cache_path(out_dir: str | Path, description: dict) -> Path:
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return Path(out_dir) / f"features_{key[:16]}.pt"


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, dev: torch.device, chunk: int,
                     tracker: Tracker | None = None, desc: str = "features",
                     stop: GracefulStop | None = None) -> dict[str, Tensor]:
    """``model.features`` of every clip: ``{'feats' [M, C], 'counts' [V] clips per video, 'labels' [V]}``.

    ``loader`` yields ``(clips [M_b, 3, T, H, W], labels [V_b], counts [V_b])`` (see ``collate_videos``).
    ``stop`` (``engine.interrupt``) is asked after every batch of videos: on a stop, ``stop.interrupted``
    is raised and nothing is kept.
    """
    model.eval()
    feats, counts, labels = [], [], []
    batches = tracker.progress(loader, desc=desc, leave=False) if tracker else loader
    for clips, video_labels, video_counts in batches:
        feats += [model.features(part.to(dev, non_blocking=True)).float().cpu() for part in clips.split(chunk)]
        counts.append(video_counts)
        labels.append(video_labels)
        if stop is not None and stop.should_stop():
            raise stop.interrupted(f"interrupted while extracting {desc}; nothing of them is kept")
    return {"feats": torch.cat(feats), "counts": torch.cat(counts), "labels": torch.cat(labels)}


def video_set_features(model: nn.Module, csv_file: str, cfg: Protocol, dev: torch.device,
                       tracker: Tracker | None = None, desc: str = "features", labelled: bool = True,
                       stop: GracefulStop | None = None) -> dict[str, Tensor]:
    """:func:`extract_features` of the deterministic test clips of every video of ``csv_file``.

    Clips: ``cfg.seq`` frames at ``cfg.img_dim``, half-overlapping windows x ``cfg.test_views``;
    ``cfg.classes`` bounds the labels, ``cfg.batch_size`` clips go through the model at a time.
    ``labelled=False`` also reads ``path,frames`` CSVs; a video without a label gets -1
    (``datasets.clips.UNLABELLED``) and ``cfg.classes`` is not read.
    """
    from datasets import ClipDataset

    dataset = ClipDataset(csv_file, "test", seq=cfg.seq, img_dim=cfg.img_dim, views=cfg.test_views,
                          num_classes=cfg.classes if labelled else None, lazy=True, labelled=labelled)
    return extract_features(model, video_loader(dataset, workers=cfg.workers), dev, cfg.batch_size, tracker,
                            desc=desc, stop=stop)


def cached_features(model: nn.Module, cfg: Protocol, dev: torch.device, tracker: Tracker,
                    stop: GracefulStop | None = None) -> dict[str, dict[str, Tensor]]:
    """``{'train': ..., 'test': ...}`` features (see :func:`extract_features`), from the cache when valid.
    ``stop``: see :func:`extract_features` (the train set's features are not cached before the test set's)."""
    description = cache_description(cfg)
    path = cache_path(cfg.out_dir, description)
    if path.is_file():
        cached = load_checkpoint(path)
        if cached.get("description") == description:
            tracker.print(f"features read from the cache {path}")
            return {"train": cached["train"], "test": cached["test"]}
    model.to(dev)
    splits = {}
    for split, csv_file in (("train", cfg.train_csv), ("test", cfg.test_csv)):
        splits[split] = video_set_features(model, csv_file, cfg, dev, tracker, desc=f"{split} features", stop=stop)
    save_checkpoint({"description": description, **splits}, path)
    tracker.print(f"features of {len(splits['train']['labels'])} train and {len(splits['test']['labels'])} "
                  f"test videos cached in {path}")
    return splits


class VideoFeatures(Dataset):
    """Per-video items ``(clip features [N_i, C], label)`` of an :func:`extract_features` result."""

    def __init__(self, features: dict[str, Tensor], videos: list[int] | None = None):
        starts = torch.cumsum(features["counts"], 0) - features["counts"]  # [V]
        self.videos = list(range(len(features["counts"]))) if videos is None else list(videos)
        self.features, self.starts = features, starts

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        v = self.videos[i]
        start, count = int(self.starts[v]), int(self.features["counts"][v])
        return self.features["feats"][start:start + count], int(self.features["labels"][v])


class ClipFeatureSamples(Dataset):
    """One training sample per video: ``(feature [C] of one of its clips, the video's label)``.

    The clip is drawn uniformly with torch's global generator, which the training loop seeds per
    (seed, epoch, index): each epoch sees one random window of every video, so a long video weighs
    no more than a short one (as one random clip per video in ``ClipDataset``'s train mode)."""

    def __init__(self, features: dict[str, Tensor], videos: list[int] | None = None):
        self.per_video = VideoFeatures(features, videos)

    def __len__(self) -> int:
        return len(self.per_video)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        feats, label = self.per_video[i]  # [N_i,C]
        return feats[int(torch.randint(len(feats), ()))], label
