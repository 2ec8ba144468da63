"""Temporal alignment L_align (docs/method.md §3): fine steps of clips a|b against the global clip g."""

import torch
import torch.nn.functional as F

from engine.distributed import all_gather_with_grad

from ._checks import check_shape, in_float32


@in_float32
def temporal_alignment(u: torch.Tensor, tau: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video step classification between the a|b clips and the global clip g.

    u: local [B, 3, C, L] (clips a, b, g; L steps, L even), gathered with gradient.
    o = concat over time of avgpool_time(u_a, L/2) and avgpool_time(u_b, L/2) [B, C, L],
    g = u_g; both normalised over C. For each video the logits o_m·g_n/τ classify step m
    as target m, and g_m·o_n/τ likewise. Returns loss = mean of the two cross-entropies
    (each averaged over all videos and steps) and acc over both directions.
    """
    check_shape("u", u, "[B, 3, C, L] with L even", 4, {1: 3})
    steps = u.shape[-1]
    if steps % 2:
        raise ValueError(f"u must have shape [B, 3, C, L] with L even, got {list(u.shape)}")
    # a collective: every rank computes every term at every step (mfo_objective; --split from the shared epoch)
    ua, ub, ug = all_gather_with_grad(u).unbind(1)  # 3 x [Bg, C, L]
    half = steps // 2
    o = torch.cat([F.adaptive_avg_pool1d(ua, half), F.adaptive_avg_pool1d(ub, half)], dim=-1)  # [Bg, C, L]
    o, g = F.normalize(o, dim=1), F.normalize(ug, dim=1)  # [Bg, C, L] each
    o_to_g = torch.einsum("bcm,bcn->bmn", o, g) / tau  # [Bg, L, L]: row m = step m of o vs steps of g
    g_to_o = o_to_g.transpose(1, 2)  # [Bg, L, L]: row m = step m of g vs steps of o
    logits = torch.cat([o_to_g, g_to_o]).flatten(0, 1)  # [2Bg*L, L]
    target = torch.arange(steps, device=u.device).repeat(logits.shape[0] // steps)  # [2Bg*L]
    loss = F.cross_entropy(logits, target)  # both directions have equally many rows
    acc = (logits.argmax(1) == target).float().mean()
    return loss, acc
