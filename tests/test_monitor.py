"""evaluation.monitor: effective rank, embedding spread, DINO-style kNN, the standardised logistic-regression probe,
the monitor on real clips (1 and 2 workers), the clip windows of CentreClipDataset and the same-video retrieval
diagnostic."""
import math
import shutil

import numpy as np
import pytest
import torch

from datasets import CentreClipDataset, read_csv
from datasets.demo import make_demo_data
from datasets.index import VideoRecord, frame_name, write_csv
from evaluation.monitor import (KnnMonitor, batch_health, effective_rank, embedding_stats, fit_logistic_regression,
                                knn_top1, linear_probe_top1, same_video_top1, standardize, video_identity)
from models import build_backbone
from tests.two_workers import run_on_two_workers


def test_effective_rank_against_numpy_and_known_cases():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, generator=gen) @ torch.diag(torch.tensor([5.0, 3, 2, 1, 0.5, 0.1, 0.01, 0.001]))
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-9)
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0)
    assert effective_rank(torch.ones(10, 4)) == pytest.approx(1.0)  # rank one: a complete collapse
    assert effective_rank(torch.zeros(5, 3)) == 0.0


def test_embedding_stats_normalise_rows_first():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(200, 16, generator=gen)
    stats = embedding_stats(z * torch.rand(200, 1, generator=gen) * 100)  # row scale must not matter
    zn = z / z.norm(dim=1, keepdim=True)
    want_std = sum(float(np.std(zn[:, d].numpy(), ddof=1)) for d in range(16)) / 16
    assert stats["std"] == pytest.approx(want_std, rel=1e-5)
    assert stats["erank"] == pytest.approx(effective_rank(zn), rel=1e-6)
    collapsed = embedding_stats(torch.ones(50, 16) + 1e-4 * torch.randn(50, 16, generator=gen))
    assert collapsed["std"] < 1e-3 and collapsed["erank"] < 2


def knn_loop(train, train_labels, test, k, temperature):
    """DINO's weighted kNN written out one query at a time."""
    preds = []
    for q in test:
        sims = [(float(torch.dot(q / q.norm(), t / t.norm())), int(y)) for t, y in zip(train, train_labels)]
        sims.sort(key=lambda s: -s[0])
        votes = {}
        for sim, y in sims[:k]:
            votes[y] = votes.get(y, 0.0) + math.exp(sim / temperature)
        preds.append(max(sorted(votes), key=lambda c: votes[c]))
    return preds


def test_knn_matches_a_loop_and_uses_its_weights():
    gen = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 6, generator=gen)
    train_labels = torch.randint(0, 4, (60,), generator=gen)
    test_labels = torch.randint(0, 4, (25,), generator=gen)
    train = centres[train_labels] + 0.8 * torch.randn(60, 6, generator=gen)
    test = centres[test_labels] + 0.8 * torch.randn(25, 6, generator=gen)
    for k, temperature in ((20, 0.07), (5, 0.5), (100, 0.07)):
        preds = knn_loop(train, train_labels, test, k, temperature)
        want = sum(p == int(y) for p, y in zip(preds, test_labels)) / 25
        assert knn_top1(train, train_labels, test, test_labels, k=k, temperature=temperature, chunk=7) == want
    assert knn_top1(train, train_labels, test, test_labels) > 0.5  # separable clusters are found
    # weights matter: one very close neighbour of class 1 outvotes two far ones of class 0 at a low temperature
    memory = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_top1(memory, torch.tensor([1, 0, 0]), query, torch.tensor([1]), k=3, temperature=0.07) == 1.0
    assert knn_top1(memory, torch.tensor([1, 0, 0]), query, torch.tensor([1]), k=3, temperature=100.0) == 0.0


def test_standardize_matches_a_loop_and_leaves_constant_dimensions_finite():
    gen = torch.Generator().manual_seed(4)
    train = torch.randn(9, 4, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 1.0]) + 3
    train[:, 3] = 2.5  # constant over train: only centred
    test = torch.randn(5, 4, generator=gen)
    got_train, got_test = standardize(train, test)
    assert got_train.dtype == torch.float64
    for d in range(4):
        column = [float(v) for v in train[:, d]]
        mean = sum(column) / len(column)
        std = math.sqrt(sum((v - mean) ** 2 for v in column) / len(column))  # population, over the train rows
        scale = std if d != 3 else 1.0
        for rows, got in ((train, got_train), (test, got_test)):
            for i in range(len(rows)):
                assert float(got[i, d]) == pytest.approx((float(rows[i, d]) - mean) / scale, rel=1e-9, abs=1e-12)
    assert torch.all(got_train[:, 3] == 0) and torch.isfinite(got_test).all()
    assert got_train[:, :3].std(0, correction=0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="train row"):
        standardize(torch.empty(0, 4), test)


def logistic_regression_by_gradient_descent(x, y, classes, l2, steps=4000, lr=0.5):
    """The minimiser of mean cross-entropy + l2/2 ||W||^2 by plain full-batch gradient descent in numpy,
    with the gradient written out: (softmax - onehot) x / N + l2 W for W, (softmax - onehot) / N for b."""
    x, y = x.numpy().astype(np.float64), y.numpy()
    weight, bias = np.zeros((classes, x.shape[1])), np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ weight.T + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        weight -= lr * ((p - onehot).T @ x / len(x) + l2 * weight)
        bias -= lr * (p - onehot).mean(0)
    return weight, bias


def test_logistic_regression_reaches_the_minimum_found_by_gradient_descent():
    gen = torch.Generator().manual_seed(5)
    y = torch.arange(24) % 3
    x = torch.randn(3, 2, generator=gen)[y] + 0.9 * torch.randn(24, 2, generator=gen)  # overlapping classes
    weight, bias = fit_logistic_regression(x, y, 3, iters=100, l2=0.1)
    want_weight, want_bias = logistic_regression_by_gradient_descent(x, y, 3, l2=0.1)
    assert weight.shape == (3, 2) and bias.shape == (3,)
    assert np.allclose(weight.numpy(), want_weight, atol=1e-6) and np.allclose(bias.numpy(), want_bias, atol=1e-6)
    again = fit_logistic_regression(x, y, 3, iters=100, l2=0.1)  # deterministic: the same bits
    assert torch.equal(again[0], weight) and torch.equal(again[1], bias)
    # a larger penalty gives smaller weights (so l2 is used)
    assert fit_logistic_regression(x, y, 3, iters=100, l2=1.0)[0].norm() < weight.norm()


def test_linear_probe_on_a_separable_problem_and_its_errors():
    # class = sign of the first coordinate, far from the boundary; the second coordinate is noise
    gen = torch.Generator().manual_seed(6)
    y_train, y_test = torch.arange(20) % 2, torch.arange(10) % 2
    x_train = torch.stack([4 * y_train - 2 + 0.3 * torch.randn(20, generator=gen), torch.randn(20, generator=gen)], 1)
    x_test = torch.stack([4 * y_test - 2 + 0.3 * torch.randn(10, generator=gen), torch.randn(10, generator=gen)], 1)
    assert linear_probe_top1(x_train, y_train, x_test, y_test) == 1.0
    assert linear_probe_top1(x_train, y_train, x_test, 1 - y_test) == 0.0  # every test video predicted
    with pytest.raises(ValueError, match="train and test"):
        linear_probe_top1(x_train[:0], y_train[:0], x_test, y_test)


def test_probe_reads_a_low_variance_direction_that_cosine_knn_misses():
    """Two classes that differ only along one direction of small variance: the cosine of the raw features
    is ruled by the 19 large noisy directions, so the kNN is near chance; the standardised probe finds it."""
    gen = torch.Generator().manual_seed(7)

    def features(n):
        y = torch.arange(n) % 2
        x = 5 + 10 * torch.rand(n, 20, generator=gen)  # [n,20]: large, uninformative
        x[:, 0] = 1 + 0.1 * (2 * y - 1) + 0.02 * torch.randn(n, generator=gen)  # small, tells the class
        return x, y

    (train, train_labels), (test, test_labels) = features(200), features(100)
    assert knn_top1(train, train_labels, test, test_labels) < 0.7
    assert linear_probe_top1(train, train_labels, test, test_labels) >= 0.97


def test_batch_health_reads_forward_rows_of_clips_a_and_b():
    gen = torch.Generator().manual_seed(3)
    out = {"high": torch.randn(4, 3, 8, generator=gen), "mid": torch.randn(8, 3, 8, generator=gen),
           "low": torch.randn(8, 3, 8, generator=gen)}
    health = batch_health(out)
    assert set(health) == {"erank_high", "std_high", "erank_mid", "std_mid", "erank_low", "std_low"}
    assert health["erank_mid"] == pytest.approx(embedding_stats(out["mid"][:4, :2].flatten(0, 1))["erank"])


SEQ, IMG = 8, 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo_data(tmp_path_factory.mktemp("monitor") / "demo", videos=12, frames=14, seed=2)
    write_csv(root / "train5.csv", read_csv(root / "train.csv")[:5])  # odd: the two ranks get 3 and 2 videos
    return root


def _features(backbone, csv_file, level=2):
    dataset = CentreClipDataset(csv_file, seq=SEQ, img_dim=IMG)
    with torch.no_grad():
        feats = torch.cat([backbone(dataset[i][0][None])[level].mean(dim=(2, 3, 4)) for i in range(len(dataset))])
    return feats, torch.tensor([v.label for v in dataset.videos])


def _copy_frames(video, first, count, folder):
    """A frame folder holding frames ``first .. first + count - 1`` of ``video`` renumbered from 0."""
    folder.mkdir(parents=True)
    for t in range(count):
        shutil.copy(video.path / frame_name(first + t), folder / frame_name(t))
    return folder


def test_centre_first_last_and_static_clips_are_those_frames(demo, tmp_path):
    dataset = CentreClipDataset(demo / "train.csv", seq=SEQ, img_dim=IMG)
    clip, label = dataset[0]
    video = dataset.videos[0]
    assert clip.shape == (3, SEQ, IMG, IMG) and label == video.label and video.frames == 14
    assert torch.equal(clip, dataset[0][0])  # deterministic
    # a 14-frame video, 8-frame clips: the centre window starts at frame 3, the last at frame 6;
    # each equals the first window of a folder that holds only those frames
    for window, start in (("centre", 3), ("first", 0), ("last", 6)):
        cut = VideoRecord(_copy_frames(video, start, SEQ, tmp_path / window), SEQ, video.label)
        write_csv(tmp_path / f"{window}.csv", [cut])
        want = CentreClipDataset(tmp_path / f"{window}.csv", seq=SEQ, img_dim=IMG, window="first")[0][0]
        got = CentreClipDataset(demo / "train.csv", seq=SEQ, img_dim=IMG, window=window)[0][0]
        assert torch.equal(got, want), window
    static = CentreClipDataset(demo / "train.csv", seq=SEQ, img_dim=IMG, window="last", static=True)[0][0]
    last = CentreClipDataset(demo / "train.csv", seq=SEQ, img_dim=IMG, window="last")[0][0]
    assert torch.equal(static, last[:, :1].expand_as(last)) and not torch.equal(static, last)
    with pytest.raises(ValueError, match="window"):
        CentreClipDataset(demo / "train.csv", seq=SEQ, img_dim=IMG, window="middle")


def test_same_video_top1_matches_a_loop():
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(30, 5, generator=gen)
    keys = query + 1.2 * torch.randn(30, 5, generator=gen)  # noisy: some videos are missed
    found = 0
    for i, q in enumerate(query):
        cosines = [float(torch.dot(q, k) / (q.norm() * k.norm())) for k in keys]
        found += max(range(len(keys)), key=lambda j: cosines[j]) == i
    got = same_video_top1(query, keys)
    assert got == pytest.approx(found / 30) and 0 < got < 1
    assert same_video_top1(query, 3 * query) == 1.0  # scale does not matter
    with pytest.raises(ValueError, match="as many"):
        same_video_top1(query, keys[:5])


def test_video_identity_pairs_each_video_s_first_and_last_clip(demo):
    torch.manual_seed(0)
    backbone = build_backbone("r3d18")
    backbone.train()
    seq = 7  # the demo's videos have 14 frames: two disjoint 7-frame clips
    with pytest.raises(ValueError, match="14 frames, fewer than 2 x seq = 16"):
        video_identity(backbone, demo / "train.csv", seq=8, img_dim=IMG, batch_size=3, workers=0,
                       device=torch.device("cpu"))
    for static in (False, True):
        got = video_identity(backbone, demo / "train.csv", seq=seq, img_dim=IMG, batch_size=3, workers=0,
                             device=torch.device("cpu"), static=static)
        assert backbone.training  # the mode is restored
        backbone.eval()
        feats = []
        for window in ("first", "last"):
            dataset = CentreClipDataset(demo / "train.csv", seq=seq, img_dim=IMG, window=window, static=static)
            with torch.no_grad():
                feats.append(torch.cat([backbone(dataset[i][0][None])[2].mean(dim=(2, 3, 4))
                                        for i in range(len(dataset))]))
        backbone.train()
        assert got == pytest.approx(same_video_top1(*feats), abs=1e-6), static


def _monitor_worker(rank, root):
    torch.manual_seed(0)
    backbone = build_backbone("r3d18")
    monitor = KnnMonitor(str(root / "train5.csv"), str(root / "test.csv"), seq=SEQ, img_dim=IMG, batch_size=2,
                         workers=0)
    import evaluation.monitor as module

    calls, probe = [], module.linear_probe_top1
    module.linear_probe_top1 = lambda *args, **kwargs: calls.append(rank) or probe(*args, **kwargs)
    try:
        result = monitor(backbone, torch.device("cpu"))
    finally:
        module.linear_probe_top1 = probe
    return {**{k: v for k, v in result.items() if not k.endswith("seconds")}, "probe_calls": len(calls)}


def test_monitor_equals_features_clip_by_clip_and_two_workers_agree(demo, tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("r3d18")
    backbone.train()
    monitor = KnnMonitor(str(demo / "train5.csv"), str(demo / "test.csv"), seq=SEQ, img_dim=IMG, batch_size=2,
                         workers=0, levels=("low", "mid"))
    got = monitor(backbone, torch.device("cpu"))
    assert backbone.training  # the mode is restored
    backbone.eval()
    train, train_labels = _features(backbone, demo / "train5.csv")
    test, test_labels = _features(backbone, demo / "test.csv")
    assert got["knn_top1"] == knn_top1(train, train_labels, test, test_labels)
    train_std, test_std = standardize(train, test)
    assert got["knn_top1_std"] == knn_top1(train_std, train_labels, test_std, test_labels)
    assert got["probe_top1"] == linear_probe_top1(train, train_labels, test, test_labels)
    assert 0 < got["probe_seconds"] < got["seconds"]
    stats = embedding_stats(torch.cat([train, test]))
    assert got["erank"] == pytest.approx(stats["erank"], rel=1e-4) and got["width"] == 512
    assert got["rows"] == 5 + len(test)  # the rank of the pooled features is at most this
    assert got["std"] == pytest.approx(stats["std"], rel=1e-4)
    for level, name in ((0, "low"), (1, "mid")):  # layer2 / layer3, pooled
        train, _ = _features(backbone, demo / "train5.csv", level)
        test, _ = _features(backbone, demo / "test.csv", level)
        assert got[f"knn_top1_{name}"] == knn_top1(train, train_labels, test, test_labels)
    with pytest.raises(ValueError, match="levels"):
        KnnMonitor(str(demo / "train5.csv"), str(demo / "test.csv"), seq=SEQ, img_dim=IMG, batch_size=2, workers=0,
                   levels=("layer5",))

    two = run_on_two_workers(_monitor_worker, demo, tmp_path=tmp_path)
    single = _monitor_worker(0, demo)
    assert [result["probe_calls"] for result in two] == [1, 0]  # rank 0 fits the probe, rank 1 gets its result
    for result in two:
        assert result["knn_top1"] == single["knn_top1"] and result["knn_top1_std"] == single["knn_top1_std"]
        assert result["probe_top1"] == single["probe_top1"]
        assert result["erank"] == pytest.approx(single["erank"], rel=1e-4)
