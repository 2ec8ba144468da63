"""Instance and motion contrast (docs/method.md §3, MFO: Qian et al., ICCV 2021) over the global batch.

Both losses are multi-positive InfoNCE on clips a and b of each video, written as masked
log-sum-exps of one [2B, 2B] similarity matrix (no [2B, 2B, C] pool of negatives).
"""

import torch
import torch.nn.functional as F

from engine.distributed import all_gather_with_grad

from ._checks import check_shape, in_float32


def _pos_neg_lse(z: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log of ``pos`` and ``neg`` of every query (v, i), plus the normalised clips.

    z: [B, 2, C] global batch. Returns lse_pos [2B], lse_neg [2B] (queries ordered v*2+i)
    and zn [B, 2, C] (L2 over C). With two clips, pos is the one other clip of the video.
    """
    zn = F.normalize(z, dim=-1)  # [B, 2, C]
    flat = zn.flatten(0, 1)  # [2B, C]
    logits = (flat / tau) @ flat.T  # [2B, 2B]
    video = torch.arange(flat.shape[0], device=z.device) // 2  # [2B]
    same = video[:, None] == video[None, :]  # [2B, 2B] same video (self included)
    lse_neg = logits.masked_fill(same, float("-inf")).logsumexp(1)  # [2B]
    lse_pos = ((zn[:, 0] * zn[:, 1]).sum(-1) / tau).repeat_interleave(2)  # [2B]: a·b for both queries
    return lse_pos, lse_neg, zn


@in_float32
def instance_contrast(z: torch.Tensor, tau: float = 0.07) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Instance contrast L_inst on the global batch.

    z: local [B, 2, C] (clips a, b), gathered with gradient. For query (v, i) with
    ẑ = normalize(z): pos = Σ_{j≠i} exp(ẑ_vi·ẑ_vj/τ), neg = Σ_{v'≠v} Σ_j exp(ẑ_vi·ẑ_v'j/τ).
    Returns loss = mean of −log(pos/(pos+neg)), acc = fraction of queries with pos > neg,
    and sim = softmax_rows(ẑ_:,0 ẑ_:,1ᵀ/τ) [B_global, B_global], detached (it only
    feeds ``infer_graph``).
    """
    check_shape("z", z, "[B, 2, C]", 3, {1: 2})
    # a collective: every rank computes every term at every step (see losses.total.mfo_objective)
    lse_pos, lse_neg, zn = _pos_neg_lse(all_gather_with_grad(z), tau)  # [2Bg], [2Bg], [Bg, 2, C]
    loss = (torch.logaddexp(lse_pos, lse_neg) - lse_pos).mean()
    acc = (lse_pos > lse_neg).float().mean()
    with torch.no_grad():
        sim = torch.softmax((zn[:, 0] / tau) @ zn[:, 1].T, dim=1)  # [Bg, Bg]
    return loss, acc, sim


@in_float32
def motion_contrast(z: torch.Tensor, z_rev: torch.Tensor, tau: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion contrast L_motion: instance contrast whose negatives add the reversed clips.

    z, z_rev: local [B, 2, C] (clips a, b forward and time-reversed), gathered with
    gradient. As ``instance_contrast``, but neg also adds Σ_j exp(ẑ_vi·r̂_vj/τ), the
    reversed clips of the same video (other videos' reversed clips are not used).
    Returns (loss, acc).
    """
    check_shape("z", z, "[B, 2, C]", 3, {1: 2})
    if z_rev.shape != z.shape:
        raise ValueError(f"z_rev must have the shape of z, {list(z.shape)}, got {list(z_rev.shape)}")
    # a collective: every rank computes every term at every step (see losses.total.mfo_objective)
    both = all_gather_with_grad(torch.stack([z, z_rev], dim=1))  # [Bg, 2 (fwd, rev), 2, C]
    lse_pos, lse_neg, zn = _pos_neg_lse(both[:, 0], tau)  # [2Bg], [2Bg], [Bg, 2, C]
    rn = F.normalize(both[:, 1], dim=-1)  # [Bg, 2, C]
    own_rev = torch.einsum("vic,vjc->vij", zn / tau, rn)  # [Bg, 2, 2] clip i vs reversed clip j
    lse_neg = torch.logaddexp(lse_neg, own_rev.flatten(0, 1).logsumexp(1))  # [2Bg]
    loss = (torch.logaddexp(lse_pos, lse_neg) - lse_pos).mean()
    acc = (lse_pos > lse_neg).float().mean()
    return loss, acc
