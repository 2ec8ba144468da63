"""Sampling for training: every sample a function of (seed, epoch, index), whatever the workers.

Two pieces make a run reproducible under any number of processes and loader workers, and resumable
in the middle of an epoch:

* :class:`ResumableSampler` — the rank's share of an epoch's permutation (torch's DistributedSampler,
  which depends only on seed and epoch), yielding ``(epoch, index)`` keys and able to skip the
  batches a resumed run has already trained on;
* :class:`EpochStream` — those keys for several epochs back to back, each epoch cut to whole batches,
  so that one DataLoader iterator serves a whole run: its workers start once and keep decoding the
  next epoch's first batches while the trainer ends the current one (monitor, checkpoints);
* :class:`SeededSamples` — wraps a dataset so that the random augmentation of a key is drawn from a
  generator seeded by ``(seed, epoch, index)``, and replaces a sample that fails to load by another
  video (reported once per path), unless ``strict``.
"""
from __future__ import annotations

import random
import sys
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from engine.errors import UserError


class UnreadableSamplesError(UserError, RuntimeError):
    """Too many samples in a row could not be loaded: the data, not the code, needs fixing."""


class ResumableSampler(DistributedSampler):
    """DistributedSampler yielding ``(epoch, index)`` and skipping the first ``skip`` samples of an epoch.

    Always drops the tail so every rank gets the same number of samples (the losses gather equal
    batches). ``set_epoch(epoch, skip)`` must be called before each epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch`` after the first ``skip`` samples of this rank's share (a negative skip is an error)."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        order = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, i) for i in order])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)  # a skip past the end leaves nothing, never less


class EpochStream(Sampler):
    """The keys of epochs ``start, start + 1, ... end - 1`` back to back, for one rank.

    Epoch ``e`` contributes :class:`ResumableSampler`'s keys of that epoch (the same order, whatever
    the number of loader workers) cut to ``steps_per_epoch * batch_size`` keys, so a batch never spans
    two epochs; the first epoch starts after the ``skip`` samples a resumed run has already trained on.
    Call :meth:`set_span` before iterating. With ``batch_size`` as the DataLoader's, batch ``k`` of the
    stream is batch ``k`` of what one epoch-by-epoch loader with ``drop_last=True`` would give.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.epochs = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        self.batch_size = batch_size
        self.start, self.skip, self.end = 0, 0, 1

    @property
    def steps_per_epoch(self) -> int:
        """Batches of one whole epoch on this rank."""
        return self.epochs.num_samples // self.batch_size

    def set_span(self, start: int, end: int, skip: int = 0) -> None:
        """Stream epochs ``start .. end - 1``, the first one without its first ``skip`` samples."""
        if skip < 0 or skip > self.steps_per_epoch * self.batch_size:
            raise ValueError(f"skip must be in [0, {self.steps_per_epoch * self.batch_size}], got {skip}")
        self.start, self.end, self.skip = start, end, skip

    def __iter__(self):
        keep = self.steps_per_epoch * self.batch_size
        for epoch in range(self.start, self.end):
            self.epochs.set_epoch(epoch)
            keys = list(self.epochs)[:keep]
            yield from keys[self.skip:] if epoch == self.start else keys

    def __len__(self) -> int:
        return max(self.end - self.start, 0) * self.steps_per_epoch * self.batch_size - \
            (self.skip if self.end > self.start else 0)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on the run seed, the epoch and the sample index."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextmanager
def seeded_rng(seed: int):
    """Seed Python's, NumPy's and torch's global generators for the block, then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededSamples(Dataset):
    """``dataset[index]`` under a per-key seed; returns ``(sample, n_replaced)``.

    A sample whose frames cannot be read (``errors``) is replaced by another video drawn from the
    same seeded generator; each bad path is reported once per process, and ``n_replaced`` counts the
    replacements so the trainer can log them. With ``strict`` the error propagates.
    """

    def __init__(self, dataset: Dataset, seed: int, errors: tuple = (OSError,), strict: bool = False,
                 max_tries: int = 10):
        self.dataset = dataset
        self.seed = seed
        self.errors = errors
        self.strict = strict
        self.max_tries = max_tries
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        picker = random.Random(seed)
        for attempt in range(self.max_tries):
            try:
                with seeded_rng(seed):
                    return self.dataset[index], attempt
            except self.errors as e:
                if self.strict:
                    raise
                self._report(e)
                if len(self.dataset) < 2:
                    raise
                index = (index + 1 + picker.randrange(len(self.dataset) - 1)) % len(self.dataset)  # another video
                seed = sample_seed(self.seed, epoch, index)
        raise UnreadableSamplesError(f"{self.max_tries} samples in a row could not be loaded; last one: index "
                                     f"{index}. Check the data (see the messages above) or pass --strict_data to "
                                     "stop at the first.")

    def _report(self, error: Exception) -> None:
        where = str(getattr(error, "path", error))
        if where not in self._reported:
            self._reported.add(where)
            print(f"[data] replacing an unreadable sample by another video: {error}", file=sys.stderr, flush=True)
