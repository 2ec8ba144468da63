"""Temporal operations on 5-D feature maps ``[N, C, t, h, w]``: reversal, motion excitation, pooling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stack_reversed(x: Tensor) -> Tensor:
    """Stack ``x`` with its time-flipped copy along the batch: first N forward, last N reversed.

    ``[N, C, t, h, w] -> [2N, C, t, h, w]``; row ``N + i`` is row ``i`` played backwards.
    """
    return torch.cat([x, x.flip(2)], dim=0)


def pool_time(x: Tensor, steps: int) -> Tensor:
    """Adaptive average pool to ``steps`` time bins and one spatial cell: ``[N,C,t,h,w] -> [N,C,steps]``.

    The spatial mean first, then the time bins: the same values as ``adaptive_avg_pool3d(x, (steps, 1,
    1))`` (every frame has ``h * w`` cells), but a plain reduction instead of that kernel, whose CUDA
    backward took 12 ms a step on the paper's maps.
    """
    return F.adaptive_avg_pool1d(x.mean(dim=(3, 4)), steps)  # [N,C,steps]


class MotionExcitation(nn.Module):
    """Motion excitation of TEA (Li et al., CVPR 2020) on a 3-D feature map.

    ``r = BN(conv1x1(x))`` reduces the channels by ``reduction``; the motion at step ``t`` is
    ``dwconv3x3(r)[t+1] - r[t]`` (zero for the last step); it is averaged over space, mapped back
    to ``C`` channels (1x1 conv + BN) and turned into ``m = sigmoid(.) - 0.5``; the output is
    ``x + m * x``. Convolutions have no bias (BN follows, or the depthwise conv feeds a difference).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        reduced = channels // reduction
        self.reduce = nn.Conv3d(channels, reduced, kernel_size=1, bias=False)
        self.reduce_bn = nn.BatchNorm3d(reduced)
        self.transform = nn.Conv3d(
            reduced, reduced, kernel_size=(1, 3, 3), padding=(0, 1, 1), groups=reduced, bias=False
        )
        self.expand = nn.Conv3d(reduced, channels, kernel_size=1, bias=False)
        self.expand_bn = nn.BatchNorm3d(channels)

    def gate(self, r: Tensor) -> Tensor:
        """``m`` [N,C,t,1,1] from the reduced map ``r = reduce(x)`` [N,C/16,t,h,w]."""
        r = self.reduce_bn(r)
        diff = self.transform(r[:, :, 1:]) - r[:, :, :-1]  # [N,C/16,t-1,h,w]
        diff = F.pad(diff, (0, 0, 0, 0, 0, 1))  # [N,C/16,t,h,w], zero motion at the last step
        m = diff.mean(dim=(3, 4), keepdim=True)  # [N,C/16,t,1,1]
        return torch.sigmoid(self.expand_bn(self.expand(m))) - 0.5  # [N,C,t,1,1]

    def forward(self, x: Tensor) -> Tensor:
        m = self.gate(self.reduce(x))  # [N,C,t,1,1]
        return x + m * x  # [N,C,t,h,w]

    def pooled_with_reversed(self, x: Tensor, steps: int) -> Tensor:
        """``pool_time(self(stack_reversed(x)), steps)`` [2N,C,steps], without the full-size maps.

        The gate ``m`` is constant over space, so the spatial mean of ``x + m * x`` is
        ``(1 + m) * mean(x)``: the excited map is never built. And the 1x1x1 reduction commutes with
        the time flip, so it runs once on ``x`` and its (16 times smaller) output is flipped, instead
        of building the reversed copy of ``x``. BatchNorm sees the same stacked batch as in
        ``forward``. On the paper's low map (``[192, 128, 8, 28, 28]`` in float32, 0.6 GB) this saves
        writing and re-reading about 4 GB a step.
        """
        means = stack_reversed(x.mean(dim=(3, 4)))  # [2N,C,t]
        m = self.gate(stack_reversed(self.reduce(x)))  # [2N,C,t,1,1]
        return F.adaptive_avg_pool1d(means * (1 + m.flatten(2)), steps)  # [2N,C,steps]
