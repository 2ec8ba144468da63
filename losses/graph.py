"""Graph constraint (docs/method.md §3): semantic neighbours inferred from L_inst and the prototypes."""

import torch
import torch.nn.functional as F

from engine.distributed import all_gather_with_grad

from ._checks import check_shape, in_float32


@in_float32
def infer_graph(sim: torch.Tensor, labels: torch.Tensor, thres: float = 0.05) -> torch.Tensor:
    """Row-stochastic graph G [N, N] from similarities and semantic labels.

    sim: [N, N] (the detached ``sim`` of ``instance_contrast``), labels: [N] ints.
    Entries of sim below ``thres`` are zeroed (the diagonal is kept), only pairs with equal
    labels are kept, and every row is normalised to sum 1.
    """
    n = sim.shape[0] if sim.dim() else 0
    check_shape("sim", sim, "[N, N]", 2, {1: n})
    check_shape("labels", labels, f"[N] with N = {n}", 1, {0: n})
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)  # [N, N]
    keep = ((sim >= thres) | eye) & (labels[:, None] == labels[None, :])  # [N, N]
    graph = sim * keep  # [N, N]
    return graph / graph.sum(1, keepdim=True)


@in_float32
def graph_constraint(z: torch.Tensor, graph: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Graph constraint L_graph on the global batch.

    z: local [B, 2, C] (clips a, b), gathered with gradient; graph: [B_global, B_global].
    P = softmax_rows(ẑ_:,0 ẑ_:,1ᵀ/τ); loss = mean over all B_global² entries of
    −log(P + 1e-10) ⊙ G (the average runs over entries, not per row, as in the original).
    """
    check_shape("z", z, "[B, 2, C]", 3, {1: 2})
    # a collective: from --split on (an epoch every rank shares) every rank computes it at every step
    zn = F.normalize(all_gather_with_grad(z), dim=-1)  # [Bg, 2, C]
    check_shape("graph", graph, f"[B_global, B_global] with B_global = {zn.shape[0]}", 2,
                {0: zn.shape[0], 1: zn.shape[0]})
    prob = torch.softmax((zn[:, 0] / tau) @ zn[:, 1].T, dim=1)  # [Bg, Bg]
    return (-torch.log(prob + 1e-10) * graph).mean()
