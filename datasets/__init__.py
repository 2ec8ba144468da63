"""Video data: CSV indexes of frame folders and video files, decoding, clip augmentations and datasets.

Public names (a contract for the rest of the project): ``PretrainDataset``, ``ClipDataset``,
``read_csv``, ``DataError``, ``FrameDecodeError``, ``IMAGENET_MEAN``, ``IMAGENET_STD``,
``denormalize`` (and ``CentreClipDataset``, ``VideoRecord``, ``normalize``, ``VideoDecodeError``). They are
imported on first use, so that the torch-free parts (``datasets.index``, used by the frame and CSV scripts) load fast.
"""

import importlib

_HOMES = {
    "PretrainDataset": "datasets.pretrain",
    "ClipDataset": "datasets.clips",
    "CentreClipDataset": "datasets.clips",
    "FrameDecodeError": "datasets.index",
    "VideoDecodeError": "datasets.videos",
    "DataError": "datasets.index",
    "VideoRecord": "datasets.index",
    "read_csv": "datasets.index",
    "IMAGENET_MEAN": "datasets.transforms",
    "IMAGENET_STD": "datasets.transforms",
    "denormalize": "datasets.transforms",
    "normalize": "datasets.transforms",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
