"""Video backbones that return three feature levels (low, mid, high).

Every backbone maps a clip batch ``[N, 3, T, H, W]`` to the tuple ``(low, mid, high)`` of 5-D feature
maps ``[N, C, t, h, w]`` with ``t = T/2, T/4, T/8`` (for ``T`` a multiple of 8), and exposes the three
channel counts as ``channels`` so that heads never hard-code widths. No pretrained weights are
ever loaded: everything is built with ``weights=None`` and initialised from scratch.

- ``r3d18``: the R3D-18 of Hara et al. used by the paper (7x7x7 stem), 33,203,904 parameters,
  channels (128, 256, 512) from layer2 / layer3 / layer4;
- ``r2plus1d18``: torchvision's R(2+1)D-18, same taps and channels;
- ``s3d``: torchvision's S3D, taps after Mixed_3c / Mixed_4f / Mixed_5c, channels (480, 832, 1024).
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.video import S3D, VideoResNet, r2plus1d_18
from torchvision.models.video.resnet import BasicBlock, Conv3DSimple

BACKBONES = ("r3d18", "s3d", "r2plus1d18")
LEVELS = ("low", "mid", "high")  # the names of the maps every backbone returns, in that order
# Spatial stride of the high (last) map: the stem's (4 for r3d18: conv + max-pool; 2 for r2plus1d18) times
# 8 for layers 2-4; 32 for S3D. An input side below it gives a last map of one position that sees mostly
# padding (S3D fails outright below 17 pixels); below twice it, the last map has one real position a side.
HIGH_STRIDE = {"r3d18": 32, "r2plus1d18": 16, "s3d": 32}


def temporal_steps(arch: str, seq: int) -> tuple[int, int, int]:
    """Time steps of the (low, mid, high) maps for clips of ``seq`` frames.

    Each of the ResNets' layers 2-4 halves time with a kernel-3, padding-1, stride-2 convolution:
    ``ceil(t / 2)``. S3D halves it in its stem convolution and in the pooling before Mixed_4b (both
    rounding up), then pools kernel 2, stride 2, without padding, before Mixed_5b: ``floor(t / 2)``,
    which leaves no step (an error) below 2 mid steps."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}: choose one of {', '.join(BACKBONES)}")
    low = -(-seq // 2)
    mid = -(-low // 2)
    high = mid // 2 if arch == "s3d" else -(-mid // 2)
    return low, mid, high


def min_seq(arch: str, steps: tuple[int, int, int] = (1, 1, 1)) -> int:
    """The fewest frames per clip for which ``arch``'s (low, mid, high) maps have at least ``steps`` time
    steps each; the default, one step per map, is what the backbone itself needs to run (1 for the
    ResNets, 5 for S3D)."""
    seq = 1
    while any(have < need for have, need in zip(temporal_steps(arch, seq), steps)):
        seq += 1
    return seq


class HaraStem(nn.Sequential):
    """3D-ResNets stem: conv 7x7x7 stride (1,2,2) -> BN -> ReLU -> max-pool (1,3,3) stride (1,2,2)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )


class ResNetTrunk(nn.Module):
    """The stem and four layers of a torchvision ``VideoResNet``; layer2/3/4 are the three levels."""

    def __init__(self, net: VideoResNet) -> None:
        super().__init__()
        self.stem = net.stem
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.channels = (128, 256, 512)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # s = spatial stride of the stem: 4 for r3d18 (conv + max-pool), 2 for r2plus1d18
        x = self.layer1(self.stem(x))  # [N,64,T,H/s,W/s]
        low = self.layer2(x)  # [N,128,T/2,H/2s,W/2s]
        mid = self.layer3(low)  # [N,256,T/4,H/4s,W/4s]
        high = self.layer4(mid)  # [N,512,T/8,H/8s,W/8s]
        return low, mid, high


class S3DTrunk(nn.Module):
    """torchvision's S3D ``features`` cut after Mixed_3c, Mixed_4f and Mixed_5c (no 7x7 pooling head)."""

    def __init__(self, net: S3D) -> None:
        super().__init__()
        # features: 0-4 stem, 5-6 Mixed_3b/3c, 7 pool, 8-12 Mixed_4b..4f, 13 pool, 14-15 Mixed_5b/5c;
        # slices keep these indices, so key 'high.14.<...>' is torchvision's 'features.14.<...>'
        self.low = net.features[:7]
        self.mid = net.features[7:13]
        self.high = net.features[13:]
        self.channels = (480, 832, 1024)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        low = self.low(x)  # [N,480,T/2,H/8,W/8]
        mid = self.mid(low)  # [N,832,T/4,H/16,W/16]
        high = self.high(mid)  # [N,1024,T/8,H/32,W/32] (sizes rounded down)
        return low, mid, high


def build_backbone(name: str) -> nn.Module:
    """Build the named backbone (one of ``BACKBONES``), randomly initialised."""
    if name == "r3d18":
        # VideoResNet's init is the paper's: kaiming-normal (fan_out) convs, BN weight 1 / bias 0
        return ResNetTrunk(VideoResNet(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], HaraStem))
    if name == "r2plus1d18":
        return ResNetTrunk(r2plus1d_18(weights=None))
    if name == "s3d":
        # torchvision's BN momentum of 0.001 suits its pretrained weights only; from scratch the
        # running statistics would barely move, so use the standard BatchNorm3d
        return S3DTrunk(S3D(norm_layer=nn.BatchNorm3d))
    raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")


def img_dim_warning(arch: str, img_dim: int) -> str | None:
    """A warning for crop sizes that train but give a degenerate last feature map."""
    stride = HIGH_STRIDE[arch]
    if img_dim < 2 * stride:
        return (f"warning: --img_dim {img_dim} gives {arch} a last feature map with one real position a side "
                f"(stride {stride}): spatial pooling and CAMs are degenerate; fine for tests, the paper uses 112")
    return None
