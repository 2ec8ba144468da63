"""Feature extraction and its cache key; per-video and per-clip feature datasets."""
from collections import Counter
from dataclasses import replace


import torch
from torch import nn

from engine.checkpoint import save_checkpoint
from evaluation.data import train_loader, video_loader
from evaluation.protocol import Protocol
from evaluation.features import (ClipFeatureSamples, VideoFeatures, cache_description, cache_path,
                                 extract_features)


class SumFeatures(nn.Module):
    """features(x) = [sum of x, max of x] per clip: easy to compute by hand."""

    def features(self, x):  # [n,3,T,H,W] -> [n,2]
        flat = x.flatten(1)
        return torch.stack([flat.sum(1), flat.amax(1)], 1)


def test_extract_features_keeps_clip_order_and_counts():
    gen = torch.Generator().manual_seed(0)
    videos = [(torch.rand(n, 3, 2, 4, 4, generator=gen), y) for n, y in ((3, 1), (1, 0), (2, 4))]
    out = extract_features(SumFeatures(), video_loader(videos, workers=0), torch.device("cpu"),
                           chunk=2)
    assert out["counts"].tolist() == [3, 1, 2] and out["labels"].tolist() == [1, 0, 4]
    expected = torch.tensor([[c.sum().item(), c.max().item()] for clips, _ in videos for c in clips])
    torch.testing.assert_close(out["feats"], expected)


def features_fixture():
    feats = torch.arange(12.0).view(6, 2)  # 6 clips: video 0 has 2, video 1 has 3, video 2 has 1
    return {"feats": feats, "counts": torch.tensor([2, 3, 1]), "labels": torch.tensor([7, 8, 9])}


def test_video_features_and_clip_samples():
    features = features_fixture()
    per_video = VideoFeatures(features, [2, 1])
    assert len(per_video) == 2
    feats, label = per_video[1]
    assert label == 8 and feats.tolist() == [[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]
    assert VideoFeatures(features)[0][0].tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_clip_samples_weigh_long_and_short_videos_equally():
    """A 200-clip video and a 1-clip video: one sample each per epoch, the long one's clip drawn uniformly."""
    long_clips, short_clip = torch.arange(200.0)[:, None].expand(200, 2), torch.full((1, 2), -1.0)
    features = {"feats": torch.cat([long_clips, short_clip]), "counts": torch.tensor([200, 1]),
                "labels": torch.tensor([3, 5])}
    samples = ClipFeatureSamples(features)
    assert len(samples) == 2
    loader = train_loader(samples, batch_size=2, workers=0, seed=0)
    per_video, drawn = Counter(), Counter()
    for epoch in range(300):
        loader.sampler.set_epoch(epoch)
        for feats, labels in loader:  # [2,C], [2]
            per_video.update(labels.tolist())
            drawn.update(int(f[0]) for f, y in zip(feats, labels) if y == 3)
    assert per_video == {3: 300, 5: 300}  # equal weight, whatever the number of clips
    assert min(drawn) >= 0 and max(drawn) < 200 and len(drawn) > 150  # uniform over the long video's clips
    assert samples[1][1] == 5 and samples[1][0].tolist() == [-1.0, -1.0]
    assert len(ClipFeatureSamples(features, [0])) == 1


def test_cache_key_follows_checkpoint_data_and_settings(tmp_path):
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    train_csv.write_text("a,10,0\n")
    test_csv.write_text("b,10,1\n")
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint({"model": {"w": torch.zeros(2)}}, ckpt)
    args = Protocol(pretrained=str(ckpt), seed=0, arch="r3d18", seq=8, img_dim=32, test_views="center",
                    train_csv=str(train_csv), test_csv=str(test_csv), out_dir=str(tmp_path))
    first = cache_path(tmp_path, cache_description(args))
    assert first == cache_path(tmp_path, cache_description(args)) and first.parent == tmp_path

    save_checkpoint({"model": {"w": torch.ones(2)}}, ckpt)  # same path, new weights
    assert cache_path(tmp_path, cache_description(args)) != first
    save_checkpoint({"model": {"w": torch.zeros(2)}}, ckpt)
    assert cache_path(tmp_path, cache_description(args)) == first

    test_csv.write_text("b,10,2\n")  # relabelled data
    assert cache_path(tmp_path, cache_description(args)) != first
    test_csv.write_text("b,10,1\n")
    for name, value in (("seq", 16), ("test_views", "ten"), ("arch", "s3d")):
        changed = replace(args, **{name: value})
        assert cache_path(tmp_path, cache_description(changed)) != first, name
    random_init = replace(args, pretrained="")
    other_seed = replace(args, pretrained="", seed=1)
    assert cache_description(random_init)["weights"] == "random_init:seed=0"
    assert cache_path(tmp_path, cache_description(random_init)) != cache_path(tmp_path, cache_description(other_seed))
