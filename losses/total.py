"""The full MFO objective (DESIGN §3 "Total") from the model output dict."""

import torch

from ._checks import in_float32
from .alignment import temporal_alignment
from .contrast import instance_contrast, motion_contrast
from .graph import graph_constraint, infer_graph
from .prototypes import prototype_swap

LEVELS = ("high", "mid", "low")
KEYS = ("high", "high_t", "mid", "mid_t", "low", "low_t", "logits")
GRAPH_KEYS = ("high_g", "mid_g", "low_g")


@in_float32
def mfo_objective(out: dict[str, torch.Tensor], bank: torch.Tensor, *, use_graph: bool, thres: float = 0.05, tau: float = 0.07, proto_tau: float = 0.1, eps: float = 0.05,
                  n_iters: int = 3, level_weights: tuple[float, float, float] = (1.0, 0.5, 0.3),
                  proto_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss of one step and every term for logging.

    out: model outputs on the local batch (B videos): high [B,3,C], high_t [B,3,C,2],
    mid/low [2B,3,C] (rows B..2B-1 time-reversed), mid_t [B,3,C,4], low_t [B,3,C,8],
    logits [B,2,K], high_g/mid_g/low_g [B,3,C]. ``bank`` [N,2,K]: the prototype logits Sinkhorn
    runs over, whose last B_global rows are this global batch's (``PrototypeBank.read`` after the
    caller pushed the batch: the whole queue from epoch 10, or the batch alone). Pure: nothing is
    modified.

    L = w_h (L_inst(high) + L_align(high_t)) + Σ_{l=mid,low} w_l (L_motion(l) + L_align(l_t))
        + [Σ_l w_l L_graph(l_g) if use_graph] + proto_weight · L_proto,
    with (w_h, w_mid, w_low) = ``level_weights``; the graph comes from the detached ``sim``
    of L_inst and the semantic labels argmax(q_a + q_b) of L_proto. Returns (loss, terms):
    detached scalars 'inst', 'inst_acc', 'align_<level>', 'align_<level>_acc',
    'motion_<mid|low>', 'motion_<mid|low>_acc', 'proto', 'graph_<level>' (only with
    ``use_graph``) and 'n_clusters' (distinct semantic labels in the global batch).
    """
    needed = KEYS + GRAPH_KEYS if use_graph else KEYS  # the model skips the graph heads before --split
    missing = [key for key in needed if key not in out]
    if missing:
        raise ValueError(f"model output lacks {missing}; mfo_objective needs the keys {list(needed)}")
    batch = out["high"].shape[0]
    for name in ("mid", "low"):
        if out[name].shape[0] != 2 * batch:
            raise ValueError(f"out['{name}'] must have shape [2B, 3, C] with B = {batch} "
                             f"(forward rows, then reversed rows), got {list(out[name].shape)}")
    weights = dict(zip(LEVELS, level_weights))
    terms = {}

    inst, inst_acc, sim = instance_contrast(out["high"][:, :2], tau)
    terms.update(inst=inst, inst_acc=inst_acc)
    total = weights["high"] * inst
    for level in LEVELS:
        align, acc = temporal_alignment(out[f"{level}_t"], tau)
        terms.update({f"align_{level}": align, f"align_{level}_acc": acc})
        total = total + weights[level] * align
    for level in ("mid", "low"):
        z = out[level][:, :2]  # [2B, 2, C]
        motion, acc = motion_contrast(z[:batch], z[batch:], tau)
        terms.update({f"motion_{level}": motion, f"motion_{level}_acc": acc})
        total = total + weights[level] * motion

    proto, q_a, q_b = prototype_swap(out["logits"], bank, proto_tau, eps, n_iters)
    terms["proto"] = proto
    total = total + proto_weight * proto
    labels = (q_a + q_b).argmax(1)  # [Bg] semantic label of each video
    terms["n_clusters"] = torch.tensor(float(labels.unique().numel()), device=labels.device)

    if use_graph:
        graph = infer_graph(sim, labels, thres)  # [Bg, Bg]
        for level in LEVELS:
            term = graph_constraint(out[f"{level}_g"][:, :2], graph, tau)
            terms[f"graph_{level}"] = term
            total = total + weights[level] * term
    return total, {name: value.detach() for name, value in terms.items()}
