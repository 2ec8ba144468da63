"""Tests of models/classifier.py: the downstream classifier and loading pretrained backbones."""
import pytest
import torch

from engine.checkpoint import CheckpointError, load_backbone
from models import MFOModel, VideoClassifier


@pytest.fixture(scope="module")
def mfo_state():
    """State dict of a small MFO model with non-default BN statistics (so loading is visible)."""
    torch.manual_seed(0)
    net = MFOModel("s3d", channel=16, cluster=10)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.add_(0.01 * torch.randn_like(t))
    return net.state_dict()


def assert_backbone_equals(backbone, state, prefix):
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[prefix + key]), key


def test_shapes_and_pooled_features():
    torch.manual_seed(0)
    clf = VideoClassifier("r3d18", num_classes=7).eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        fmap, feats, logits = clf.feature_map(x), clf.features(x), clf(x)
    assert fmap.shape == (2, 512, 1, 2, 2) and feats.shape == (2, 512) and logits.shape == (2, 7)
    for n in range(2):
        for c in (0, 100, 511):
            assert torch.allclose(feats[n, c], fmap[n, c].sum() / fmap[n, c].numel(), atol=1e-6)
    fc = clf.head[1]
    assert torch.allclose(logits, feats @ fc.weight.T + fc.bias, atol=1e-5)


def test_bn_linear_head_matches_hand_computation():
    torch.manual_seed(0)
    clf = VideoClassifier("s3d", num_classes=5, head="bn_linear")
    _, bn, fc = clf.head
    bn.running_mean.uniform_(-0.05, 0.05)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    clf.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        feats, logits = clf.features(x), clf(x)
    for n in range(2):
        unit = feats[n] / feats[n].pow(2).sum().sqrt()
        normed = (unit - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias
        assert torch.allclose(logits[n], fc.weight @ normed + fc.bias, atol=1e-5)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    clf = VideoClassifier("s3d", num_classes=4, head="linear", dropout=0.5)
    assert clf.head[0].p == 0.5
    feats = torch.randn(64, 1024)
    clf.train()
    assert (clf.head[0](feats) == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    clf.eval()
    assert torch.equal(clf.head[0](feats), feats)


@pytest.mark.parametrize("kwargs,match", [
    ({"head": "mlp"}, "unknown head 'mlp'"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"head": "bn_linear", "dropout": 0.3}, "head='linear' only"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoClassifier("s3d", num_classes=3, **kwargs)


@pytest.mark.parametrize("layout", ["train_checkpoint", "ddp_state_dict", "bare_backbone"])
def test_load_backbone_layouts(tmp_path, mfo_state, layout):
    if layout == "train_checkpoint":
        ckpt = {"model": mfo_state, "epoch": 3}
    elif layout == "ddp_state_dict":
        ckpt = {"module." + k: v for k, v in mfo_state.items()}
    else:
        ckpt = {k[len("backbone."):]: v for k, v in mfo_state.items() if k.startswith("backbone.")}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    clf = VideoClassifier("s3d", num_classes=3)
    report = load_backbone(clf.backbone, path)
    assert_backbone_equals(clf.backbone, mfo_state, "backbone.")
    assert report["loaded"] == sorted(clf.backbone.state_dict())
    heads = sorted(k for k in mfo_state if not k.startswith("backbone."))
    if layout == "bare_backbone":
        assert report["ignored"] == []
        assert "ignored" not in report["summary"]
    else:
        assert report["ignored"] == heads and "prototypes.weight" in heads
        assert "global_head (" in report["summary"] and "low_heads (" in report["summary"]
    assert str(path) in report["summary"]


def test_load_backbone_reports_missing_and_unexpected_keys(tmp_path, mfo_state):
    state = dict(mfo_state)
    del state["backbone.high.14.branch0.0.weight"]
    state["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    clf = VideoClassifier("s3d", num_classes=3)
    with pytest.raises(CheckpointError, match=r"broken.pth.*1 missing key\(s\) \[high.14.branch0.0.weight\]"
                                              r".*1 unexpected key\(s\) \[extra.weight\]"):
        load_backbone(clf.backbone, path)


def test_load_backbone_wrong_architecture_and_shapes(tmp_path, mfo_state):
    path = tmp_path / "s3d.pth"
    torch.save({"model": mfo_state}, path)
    r2p1 = VideoClassifier("r2plus1d18", num_classes=3)
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \[.*\.\.\. and \d+ more\].*--arch"):
        load_backbone(r2p1.backbone, path)

    state = dict(mfo_state)
    state["backbone.low.0.0.0.weight"] = torch.zeros(2, 2, 1, 1, 1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="(?s)s3d.pth: cannot load the backbone.*size mismatch"):
        load_backbone(VideoClassifier("s3d", num_classes=3).backbone, path)


def test_load_backbone_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(VideoClassifier("s3d", num_classes=3).backbone, tmp_path / "nope.pth")
