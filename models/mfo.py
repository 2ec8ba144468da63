"""The multi-level MFO model: backbone, feature-level reversal, motion excitation, heads, prototypes.

See docs/method.md §2. The model returns embeddings only (never a loss); L2 normalisation of the
contrast, graph and fine embeddings is left to the losses.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import build_backbone
from models.temporal import MotionExcitation, pool_time

# time bins of the pooled low / mid / high maps: T/2, T/4, T/8 at the paper's 16 frames
LOW_STEPS, MID_STEPS, HIGH_STEPS = 8, 4, 2
PAPER_SEQ = 16
# least time steps of the (low, mid, high) maps the model runs on: motion excitation (on low and mid)
# compares each step with the next; min_seq(arch, MOTION_STEPS) frames give them (5 for every backbone)
MOTION_STEPS = (2, 2, 1)


def projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """Per-time-step MLP on ``[N, in, L]``: 1x1 Conv1d -> ReLU -> 1x1 Conv1d to ``out`` (with biases)."""
    return nn.Sequential(
        nn.Conv1d(in_channels, in_channels, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.Conv1d(in_channels, out_channels, kernel_size=1),
    )


class LevelHeads(nn.Module):
    """The three heads of one feature level: instance/motion contrast, graph, per-step fine."""

    def __init__(self, in_channels: int, channel: int) -> None:
        super().__init__()
        self.contrast = projection(in_channels, channel)
        self.graph = projection(in_channels, channel)
        self.fine = projection(in_channels, channel)


class MFOModel(nn.Module):
    """Multi-level feature optimisation model.

    Args:
        backbone: one of ``models.BACKBONES``.
        channel: embedding width ``C`` of every head.
        cluster: number of prototypes ``K``.

    ``forward(x, with_graph=True)`` on ``x [B, 3 clips (a, b, g), 3, T, H, W]`` returns
    (``2B`` rows: first ``B`` forward, last ``B`` from time-reversed feature maps)::

        high [B,3,C]      high_t [B,3,C,2]   high_g [B,3,C]
        mid  [2B,3,C]     mid_t  [B,3,C,4]   mid_g  [B,3,C]
        low  [2B,3,C]     low_t  [B,3,C,8]   low_g  [B,3,C]
        logits [B,2,K]    cosines of the normalised global embedding of clips a, b with the prototypes
        pooled [B,3,c]    the globally pooled ``high`` map of each clip (c = the backbone's width), for monitoring

    Under autocast only the backbone runs in low precision: motion excitation, every head and the
    prototype layer run in float32, and every output is float32.

    The ``*_g`` keys are present only when ``with_graph``.
    """

    def __init__(self, backbone: str = "r3d18", channel: int = 128, cluster: int = 1000) -> None:
        super().__init__()
        if channel < 1 or cluster < 1:
            raise ValueError(f"channel and cluster must be positive, got channel={channel}, cluster={cluster}")
        self.backbone = build_backbone(backbone)
        c_low, c_mid, c_high = self.backbone.channels
        self.me_low = MotionExcitation(c_low)
        self.me_mid = MotionExcitation(c_mid)
        self.low_heads = LevelHeads(c_low, channel)
        self.mid_heads = LevelHeads(c_mid, channel)
        self.high_heads = LevelHeads(c_high, channel)
        self.global_head = nn.Sequential(
            nn.Linear(c_high, c_high),
            nn.BatchNorm1d(c_high),
            nn.ReLU(inplace=True),
            nn.Linear(c_high, channel),
        )
        self.prototypes = nn.Linear(channel, cluster, bias=False)
        self.normalize_prototypes()
        self._warned_short_clip = False
        self.memory_format = torch.contiguous_format

    def channels_last(self) -> "MFOModel":
        """Lay out the backbone's 3D convolution weights and its input clips channels-last (NDHWC), the
        layout in which cuDNN's fastest 3D convolution kernels run, bfloat16 above all. Values, the
        state dict's keys and every output are unchanged; only memory strides differ."""
        self.backbone.to(memory_format=torch.channels_last_3d)
        self.memory_format = torch.channels_last_3d
        return self

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise the prototype rows in place (call before every optimiser step)."""
        w = self.prototypes.weight  # [K,C]
        w.copy_(F.normalize(w, dim=1))

    def forward(self, x: Tensor, with_graph: bool = True) -> dict[str, Tensor]:
        """Embeddings and prototype logits of ``x [B,3,3,T,H,W]`` (see the class docstring)."""
        if x.dim() != 6 or x.shape[1] != 3 or x.shape[2] != 3:
            raise ValueError(
                f"MFOModel expects a batch [B, 3 clips, 3 channels, T, H, W], got shape {tuple(x.shape)}"
            )
        b = x.shape[0]
        if x.shape[3] < PAPER_SEQ and not self._warned_short_clip:
            warnings.warn(
                f"clips of {x.shape[3]} frames (< {PAPER_SEQ}): the pooled {LOW_STEPS}/{MID_STEPS}/"
                f"{HIGH_STEPS} time bins no longer match the feature steps and the high-level "
                "alignment becomes a task of ties; fine for tests, wrong for real runs"
            )
            self._warned_short_clip = True
        clips = x.flatten(0, 1).contiguous(memory_format=self.memory_format)  # all 3B clips at once, [3B,3,T,H,W]
        low, mid, high = self.backbone(clips)  # [3B,c,t,h,w]
        # everything after the backbone in float32, also under autocast (where the backbone runs in bfloat16):
        # the losses divide similarities by 0.07 and Sinkhorn by 0.05, which would amplify bfloat16's rounding
        # (spacing 2^-8 near 1) to several percent; these layers cost little next to the backbone
        with torch.autocast(x.device.type, enabled=False):
            return self._heads(low.float(), mid.float(), high.float(), b, with_graph)

    def _heads(self, low: Tensor, mid: Tensor, high: Tensor, b: int, with_graph: bool) -> dict[str, Tensor]:
        """Reversal, motion excitation, pooling and heads on the three maps [3B,c,t,h,w] (see ``forward``)."""
        out = {}
        for name, fmap, excite, heads, steps in (
            ("low", low, self.me_low, self.low_heads, LOW_STEPS),
            ("mid", mid, self.me_mid, self.mid_heads, MID_STEPS),
        ):
            z = excite.pooled_with_reversed(fmap, steps)  # [6B,c,L] = pool_time(excite(stack_reversed(fmap)))
            out[name] = heads.contrast(z).mean(2).reshape(2 * b, 3, -1)  # [2B,3,C]
            fwd = z[: 3 * b]  # [3B,c,L]
            out[f"{name}_t"] = heads.fine(fwd).reshape(b, 3, -1, steps)  # [B,3,C,L]
            if with_graph:
                out[f"{name}_g"] = heads.graph(fwd).mean(2).reshape(b, 3, -1)  # [B,3,C]

        z = pool_time(high, HIGH_STEPS)  # [3B,c,2]
        out["high"] = self.high_heads.contrast(z).mean(2).reshape(b, 3, -1)  # [B,3,C]
        out["high_t"] = self.high_heads.fine(z).reshape(b, 3, -1, HIGH_STEPS)  # [B,3,C,2]
        if with_graph:
            out["high_g"] = self.high_heads.graph(z).mean(2).reshape(b, 3, -1)  # [B,3,C]

        pooled = high.mean(dim=(2, 3, 4)).reshape(b, 3, -1)  # [B,3,c] globally pooled backbone features
        out["pooled"] = pooled
        g = F.normalize(self.global_head(pooled[:, :2].flatten(0, 1)), dim=1)  # [2B,C], clips a, b
        out["logits"] = self.prototypes(g).reshape(b, 2, -1)  # [B,2,K]
        return out
