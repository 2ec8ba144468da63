"""Tests of models/backbones.py: registry, the paper's R3D-18, feature shapes of all backbones, the shortest clips."""
import math

import pytest
import torch
from torch import nn

from models import BACKBONES, MOTION_STEPS, MFOModel, build_backbone, min_seq, temporal_steps
from models.backbones import HIGH_STRIDE


@pytest.fixture(scope="module")
def r3d18():
    torch.manual_seed(0)
    return build_backbone("r3d18")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_names_and_unknown_name():
    assert BACKBONES == ("r3d18", "s3d", "r2plus1d18")
    with pytest.raises(ValueError, match="unknown backbone 'r3d50'.*r3d18, s3d, r2plus1d18"):
        build_backbone("r3d50")


def test_r3d18_trunk_has_the_authors_parameter_count(r3d18):
    assert n_params(r3d18) == 33_203_904
    assert r3d18.channels == (128, 256, 512)


def test_r3d18_is_the_hara_variant(r3d18):
    conv, bn, _, pool = r3d18.stem
    assert conv.kernel_size == (7, 7, 7) and conv.stride == (1, 2, 2) and conv.padding == (3, 3, 3)
    assert conv.bias is None and isinstance(bn, nn.BatchNorm3d)
    assert pool.kernel_size == (1, 3, 3) and pool.stride == (1, 2, 2) and pool.padding == (0, 1, 1)
    assert [len(layer) for layer in (r3d18.layer1, r3d18.layer2, r3d18.layer3, r3d18.layer4)] == [2, 2, 2, 2]
    shortcut = r3d18.layer3[0].downsample[0]
    assert shortcut.kernel_size == (1, 1, 1) and shortcut.stride == (2, 2, 2)
    assert r3d18.layer1[0].downsample is None


def test_r3d18_initialisation(r3d18):
    # kaiming normal, fan_out mode: std = sqrt(2 / (out_channels * kernel volume))
    w = r3d18.layer4[1].conv2[0].weight  # [512,512,3,3,3]
    expected_std = math.sqrt(2.0 / (512 * 27))
    assert w.mean().abs().item() < 1e-4
    assert w.std().item() == pytest.approx(expected_std, rel=0.01)
    for m in r3d18.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_s3d_batchnorm_is_the_standard_one():
    net = build_backbone("s3d")
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert bns and all(m.momentum == 0.1 and m.eps == 1e-5 for m in bns)


# expected (channels, spatial size) of low / mid / high for each backbone and input size
EXPECTED = {
    ("r3d18", 112): [(128, 14), (256, 7), (512, 4)],
    ("r3d18", 64): [(128, 8), (256, 4), (512, 2)],
    ("s3d", 112): [(480, 14), (832, 7), (1024, 3)],
    ("s3d", 64): [(480, 8), (832, 4), (1024, 2)],
    ("r2plus1d18", 112): [(128, 28), (256, 14), (512, 7)],
    ("r2plus1d18", 64): [(128, 16), (256, 8), (512, 4)],
    ("s3d", 224): [(480, 28), (832, 14), (1024, 7)],
}


@pytest.mark.parametrize(
    "name,seq,size",
    # every backbone at T=16@112 and T=8@64; S3D also at 224, where torchvision's 7x7 head would fit
    [(name, 16, 112) for name in BACKBONES] + [(name, 8, 64) for name in BACKBONES] + [("s3d", 8, 224)],
)
def test_feature_shapes(name, seq, size):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, seq, size, size))
    assert len(feats) == 3
    for level, (fmap, (channels, side), steps) in enumerate(
        zip(feats, EXPECTED[name, size], (seq // 2, seq // 4, seq // 8))
    ):
        assert fmap.shape == (1, channels, steps, side, side), f"level {level}"
        assert net.channels[level] == channels
        assert torch.isfinite(fmap).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_high_stride_gives_the_size_of_the_last_map(name):
    """HIGH_STRIDE (train.py's --img_dim rule) against real maps: one position a side at the stride, two at
    twice it, and S3D cannot even run at half of it."""
    net = build_backbone(name).eval()
    stride = HIGH_STRIDE[name]
    with torch.no_grad():
        for side, cells in ((stride, 1), (2 * stride, 2)):
            assert net(torch.zeros(1, 3, 8, side, side))[2].shape[-2:] == (cells, cells), (name, side)
        if name == "s3d":
            with pytest.raises(RuntimeError, match="Output size is too small"):
                net(torch.zeros(1, 3, 8, stride // 2, stride // 2))


@pytest.mark.parametrize("arch", BACKBONES)
def test_temporal_steps_and_min_seq_match_what_the_backbone_does(arch):
    torch.manual_seed(0)
    backbone = build_backbone(arch).eval()
    side = 2 * HIGH_STRIDE[arch]
    least = min_seq(arch)
    assert least == {"r3d18": 1, "r2plus1d18": 1, "s3d": 5}[arch]
    with torch.no_grad():
        for seq in (least, least + 1, least + 4, 16):
            maps = backbone(torch.randn(1, 3, seq, side, side))
            assert tuple(m.shape[2] for m in maps) == temporal_steps(arch, seq)
        if least > 1:
            with pytest.raises(RuntimeError):
                backbone(torch.randn(1, 3, least - 1, side, side))


@pytest.mark.parametrize("arch", BACKBONES)
def test_the_mfo_model_needs_two_mid_steps(arch):
    torch.manual_seed(0)
    least = min_seq(arch, MOTION_STEPS)
    assert least == 5
    model = MFOModel(arch, channel=8, cluster=4).eval()
    side = 2 * HIGH_STRIDE[arch]
    with torch.no_grad(), pytest.warns(UserWarning):
        model(torch.randn(2, 3, 3, least, side, side))
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3, 3, least - 1, side, side))
