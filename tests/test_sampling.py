"""Tests of engine.sampling: resumable per-rank order and per-sample seeding with bad-sample replacement."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from engine.errors import UserError
from engine.sampling import EpochStream, ResumableSampler, SeededSamples, sample_seed


class Noisy(Dataset):
    """Sample i = i plus one draw of each global generator; indices in `bad` fail like an unreadable frame."""

    def __init__(self, n: int, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            err = OSError(f"cannot decode video {i}")
            err.path = f"video{i}"
            raise err
        return torch.tensor([float(i), random.random(), float(np.random.rand()), torch.rand(()).item()])


def test_ranks_partition_each_global_batch_like_one_process():
    """2 ranks x batch b see, step by step, the same videos as 1 rank x batch 2b."""
    data, b = list(range(10)), 2
    one = list(ResumableSampler(data, 1, 0, seed=5))
    ranks = [list(ResumableSampler(data, 2, r, seed=5)) for r in range(2)]
    assert all(e == 0 for e, _ in one) and sorted(i for _, i in one) == data
    for step in range(len(ranks[0]) // b):
        merged = {i for r in ranks for _, i in r[step * b:(step + 1) * b]}
        assert merged == {i for _, i in one[step * 2 * b:(step + 1) * 2 * b]}


def test_set_epoch_reshuffles_and_skip_drops_the_trained_part():
    sampler = ResumableSampler(list(range(7)), 2, 1, seed=0)  # 7 videos, 2 ranks: tail dropped, 3 each
    sampler.set_epoch(4)
    full = list(sampler)
    assert len(full) == len(sampler) == 3 and all(e == 4 for e, _ in full)
    sampler.set_epoch(5)
    assert [i for _, i in sampler] != [i for _, i in full] or len(set(range(7))) == 1
    sampler.set_epoch(4, skip=2)
    assert list(sampler) == full[2:] and len(sampler) == 1


def test_samples_depend_only_on_seed_epoch_index_and_leave_global_rngs_alone():
    ds = SeededSamples(Noisy(6), seed=11)
    random.seed(0)
    before = random.random()
    random.seed(0)
    a, n_a = ds[(2, 3)]
    assert random.random() == before  # the caller's generators are restored
    b, _ = ds[(2, 3)]
    c, _ = ds[(3, 3)]
    assert n_a == 0 and torch.equal(a, b) and not torch.equal(a, c) and a[0] == 3
    loader = DataLoader(ds, batch_size=3, sampler=[(2, i) for i in range(6)], num_workers=2)
    from_workers = torch.cat([x for x, _ in loader])
    assert torch.equal(from_workers, torch.stack([ds[(2, i)][0] for i in range(6)]))


def test_unreadable_sample_is_replaced_reported_once_and_counted(capsys):
    ds = SeededSamples(Noisy(5, bad={1}), seed=0)
    x, replaced = ds[(0, 1)]
    assert replaced == 1 and x[0] != 1
    ds[(1, 1)]
    assert capsys.readouterr().err.count("cannot decode video 1") == 1  # reported once per path
    strict = SeededSamples(Noisy(5, bad={1}), seed=0, strict=True)
    with pytest.raises(OSError, match="cannot decode video 1"):
        strict[(0, 1)]
    hopeless = SeededSamples(Noisy(3, bad={0, 1, 2}), seed=0, max_tries=4)
    with pytest.raises(RuntimeError, match="4 samples in a row") as info:
        hopeless[(0, 0)]
    assert isinstance(info.value, UserError)  # the data's fault: one line, no traceback


def test_sample_seed_differs_across_epochs_and_indices():
    seeds = {sample_seed(0, e, i) for e in range(3) for i in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**32 for s in seeds)


def test_a_skip_past_the_end_leaves_an_empty_epoch_never_a_negative_length():
    sampler = ResumableSampler(list(range(7)), 2, 0, seed=0)  # 3 samples for this rank
    sampler.set_epoch(1, skip=5)
    assert len(sampler) == 0 and list(sampler) == []
    with pytest.raises(ValueError, match="skip must be >= 0"):
        sampler.set_epoch(1, skip=-1)


class Keys(Dataset):
    """Item ``key`` is the key itself: what a loader's batches hold shows which samples it drew."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return key


def test_epoch_stream_gives_the_batches_of_an_epoch_by_epoch_loader_with_drop_last():
    """One loader over epochs 2..4 must give, batch by batch, what a fresh drop_last loader per epoch gives;
    a resumed stream (epoch 3 after 2 batches) continues with exactly the batches that follow."""
    data, batch = Keys(23), 3  # 2 ranks: 11 each, 3 whole batches an epoch, 2 samples dropped
    for rank in range(2):
        per_epoch = []
        for epoch in range(2, 5):
            sampler = ResumableSampler(data, 2, rank, seed=7)
            sampler.set_epoch(epoch)
            per_epoch += list(DataLoader(list(sampler), batch_size=batch, drop_last=True, collate_fn=list))
        stream = EpochStream(data, batch_size=batch, num_replicas=2, rank=rank, seed=7)
        stream.set_span(2, 5)
        assert stream.steps_per_epoch == 3 and len(stream) == 27
        assert list(DataLoader(data, batch_size=batch, sampler=stream, collate_fn=list, num_workers=2)) == per_epoch
        stream.set_span(3, 5, skip=2 * batch)
        assert len(stream) == 27 - 5 * batch
        assert list(DataLoader(data, batch_size=batch, sampler=stream, collate_fn=list)) == per_epoch[5:]
    with pytest.raises(ValueError, match="skip must be in"):
        stream.set_span(0, 1, skip=10)
