"""Nearest-neighbour retrieval: recall@k on hand-made features, against a plain loop."""
import math

import pytest
import torch

from evaluation.retrieval import (centre_normalise, format_recall_table, one_clip_per_video, rank_gallery, recall_at_k,
                              video_means)


def loop_recall(query, qlabels, gallery, glabels, k):
    """Reference: centre each set, normalise, cosine, stable ranking by (-similarity, gallery index)."""
    def prep(rows):
        mean = [sum(r[c] for r in rows) / len(rows) for c in range(len(rows[0]))]
        out = []
        for r in rows:
            d = [x - m for x, m in zip(r, mean)]
            n = math.sqrt(sum(x * x for x in d)) or 1.0
            out.append([x / max(n, 1e-12) for x in d])
        return out
    q, g = prep(query.tolist()), prep(gallery.tolist())
    hits = 0
    for qi, qv in enumerate(q):
        sims = [sum(a * b for a, b in zip(qv, gv)) for gv in g]
        ranked = sorted(range(len(g)), key=lambda j: (-sims[j], j))
        hits += any(glabels[j] == qlabels[qi] for j in ranked[:k])
    return hits / len(q)


def test_recall_matches_loop_on_random_features():
    gen = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(13, 6, generator=gen), torch.randn(29, 6, generator=gen)
    qlabels, glabels = torch.randint(0, 4, (13,), generator=gen), torch.randint(0, 4, (29,), generator=gen)
    got = recall_at_k(query, qlabels, gallery, glabels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert got[f"recall@{k}"] == pytest.approx(loop_recall(query, qlabels, gallery, glabels, k))
    assert got["recall@1"] <= got["recall@3"] <= got["recall@5"]


def test_hand_made_recall_values():
    # after centring, gallery rows point along +x, -x, +y, -y; queries along +x and +y
    gallery = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    glabels = torch.tensor([0, 1, 2, 3])
    query = torch.tensor([[1.0, 0.1], [-1.0, -0.1]])  # centred: (1, .1) and (-1, -.1)
    qlabels = torch.tensor([2, 1])
    got = recall_at_k(query, qlabels, gallery, glabels, ks=(1, 2, 3))
    # query 0 ranks gallery 0 (+x), 2 (+y): class 2 found at rank 2; query 1 finds class 1 at rank 1
    assert got == {"recall@1": 0.5, "recall@2": 1.0, "recall@3": 1.0}


def test_ties_break_by_gallery_order():
    # gallery 0 and 1 are the same vector (an exact tie) with different classes
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    order = rank_gallery(query, gallery)
    assert order[0, :2].tolist() == [0, 1]
    hit_first = recall_at_k(query, torch.tensor([5, 9]), gallery, torch.tensor([5, 7, 8, 8]), ks=(1,))
    hit_second = recall_at_k(query, torch.tensor([7, 9]), gallery, torch.tensor([5, 7, 8, 8]), ks=(1, 2))
    assert hit_first["recall@1"] == 0.5  # the earlier tied video (class 5) is the nearest
    assert hit_second == {"recall@1": 0.0, "recall@2": 0.5}


def test_k_larger_than_gallery_counts_whole_gallery():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    qlabels = torch.tensor([1, 4, 2])  # class 4 is absent from the gallery
    got = recall_at_k(query, qlabels, gallery, torch.tensor([0, 1, 2]), ks=(1, 50))
    assert got["recall@50"] == pytest.approx(2 / 3)
    assert got["recall@1"] == pytest.approx(loop_recall(query, qlabels, gallery, [0, 1, 2], 1))


def test_empty_sets_are_a_readable_error():
    with pytest.raises(ValueError, match="at least one query"):
        recall_at_k(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.ones(2, 3),
                    torch.zeros(2, dtype=torch.long))


def test_video_means_and_centring():
    clips = torch.tensor([[3.0, 4.0], [0.0, 2.0], [2.0, 0.0], [0.0, -5.0]])
    means = video_means(clips, torch.tensor([1, 2, 1]))
    torch.testing.assert_close(means, torch.tensor([[0.6, 0.8], [0.5, 0.5], [0.0, -1.0]]))
    centred = centre_normalise(means)
    torch.testing.assert_close(centred.norm(dim=1), torch.ones(3))
    expected0 = torch.tensor([0.6 - 1.1 / 3, 0.8 - 0.3 / 3])
    torch.testing.assert_close(centred[0], expected0 / expected0.norm())


def test_one_clip_per_video_picks_a_clip_of_each_video():
    clips = torch.arange(1.0, 11.0)[:, None] * torch.tensor([[1.0, 0.0]]) + torch.tensor([[0.0, 1.0]])  # [10,2]
    counts = torch.tensor([3, 1, 6])
    picked = one_clip_per_video(clips, counts, torch.Generator().manual_seed(0))
    raw = [clips[i] / clips[i].norm() for i in range(10)]
    ranges = [range(0, 3), range(3, 4), range(4, 10)]
    for v, rows in enumerate(ranges):
        assert any(torch.allclose(picked[v], raw[i]) for i in rows)
    again = one_clip_per_video(clips, counts, torch.Generator().manual_seed(0))
    torch.testing.assert_close(picked, again)


def test_table_lists_every_k_in_percent():
    table = format_recall_table({"recall@1": 0.5, "recall@50": 1.0})
    head, values = table.splitlines()
    assert head.split() == ["R@1", "R@50"]
    assert values.split() == ["50.00", "100.00"]
