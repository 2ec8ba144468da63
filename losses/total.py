"""The full MFO objective (docs/method.md §3, "Total") from the model output dict, with every term switchable."""

from dataclasses import dataclass

import torch

from ._checks import in_float32
from .alignment import temporal_alignment
from .contrast import instance_contrast, motion_contrast
from .graph import graph_constraint, infer_graph
from .prototypes import prototype_swap

# the levels in the order of Objective.level_weights (train.py's --level_weights HIGH MID LOW), which is
# also the order of the sum; the backbone's own order of its maps is models.backbones.LEVELS (low, mid, high)
WEIGHT_ORDER = ("high", "mid", "low")
KEYS = ("high", "high_t", "mid", "mid_t", "low", "low_t", "logits")
GRAPH_KEYS = ("high_g", "mid_g", "low_g")
TERMS = ("inst", "motion", "align", "proto", "graph")


@dataclass(frozen=True)
class Objective:
    """Which terms enter the total and every constant of the objective; the defaults are the paper's.

    ``terms``: a subset of :data:`TERMS` — ``inst`` L_inst(high); ``motion`` L_motion(mid, low);
    ``align`` L_align at the three levels; ``proto`` L_proto; ``graph`` L_graph at the three levels
    (only where the caller enables the graph, from ``--split``). ``tau`` is the temperature of the
    contrast, alignment and graph terms, ``proto_tau`` the prototype softmax's; ``sk_eps`` and
    ``sk_iters`` are Sinkhorn's; ``level_weights`` weigh high, mid, low; ``thres`` is the graph
    inference's similarity threshold.
    """

    terms: tuple[str, ...] = TERMS
    tau: float = 0.07
    proto_tau: float = 0.1
    sk_eps: float = 0.05
    sk_iters: int = 3
    level_weights: tuple[float, float, float] = (1.0, 0.5, 0.3)
    proto_weight: float = 0.5
    thres: float = 0.05

    def __post_init__(self) -> None:
        unknown = sorted(set(self.terms) - set(TERMS))
        if unknown or not self.terms:
            raise ValueError(f"terms must be a non-empty subset of {' '.join(TERMS)}, got {' '.join(self.terms)}")
        if len(self.level_weights) != 3:
            raise ValueError(f"level_weights needs 3 values (high, mid, low), got {list(self.level_weights)}")
        for name in ("tau", "proto_tau", "sk_eps", "sk_iters", "proto_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not all(w > 0 for w in self.level_weights):
            raise ValueError(f"level_weights must be positive, got {list(self.level_weights)}")


@in_float32
def mfo_objective(out: dict[str, torch.Tensor], bank: torch.Tensor, *, use_graph: bool,
                  objective: Objective = Objective()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss of one step and every term for logging.

    out: model outputs on the local batch (B videos): high [B,3,C], high_t [B,3,C,2],
    mid/low [2B,3,C] (rows B..2B-1 time-reversed), mid_t [B,3,C,4], low_t [B,3,C,8],
    logits [B,2,K], high_g/mid_g/low_g [B,3,C]. ``bank`` [N,2,K]: the prototype logits Sinkhorn
    runs over, whose last B_global rows are this global batch's (``PrototypeBank.read`` after the
    caller pushed the batch: the whole queue from epoch 10, or the batch alone). Pure: nothing is
    modified.

    L = w_h (L_inst(high) + L_align(high_t)) + Σ_{l=mid,low} w_l (L_motion(l) + L_align(l_t))
        + [Σ_l w_l L_graph(l_g) if use_graph] + proto_weight · L_proto,
    with (w_h, w_mid, w_low) = ``objective.level_weights``, each term only if its name is in
    ``objective.terms``; the graph comes from the detached ``sim`` of L_inst and the semantic labels
    argmax(q_a + q_b) of L_proto. Every term is computed and returned whether or not it enters the
    total (a term left out is still watched). Returns (loss, terms): detached scalars 'inst',
    'inst_acc', 'align_<level>', 'align_<level>_acc', 'motion_<mid|low>', 'motion_<mid|low>_acc',
    'proto', 'graph_<level>' (only with ``use_graph``) and 'n_clusters' (distinct semantic labels
    in the global batch).
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
    obj, tau = objective, objective.tau
    weights = dict(zip(WEIGHT_ORDER, obj.level_weights))
    terms = {}
    parts = []  # (switch, weight, term) in the order of the sum

    inst, inst_acc, sim = instance_contrast(out["high"][:, :2], tau)
    terms.update(inst=inst, inst_acc=inst_acc)
    parts.append(("inst", weights["high"], inst))
    for level in WEIGHT_ORDER:
        align, acc = temporal_alignment(out[f"{level}_t"], tau)
        terms.update({f"align_{level}": align, f"align_{level}_acc": acc})
        parts.append(("align", weights[level], align))
    for level in ("mid", "low"):
        z = out[level][:, :2]  # [2B, 2, C]
        motion, acc = motion_contrast(z[:batch], z[batch:], tau)
        terms.update({f"motion_{level}": motion, f"motion_{level}_acc": acc})
        parts.append(("motion", weights[level], motion))

    proto, q_a, q_b = prototype_swap(out["logits"], bank, obj.proto_tau, obj.sk_eps, obj.sk_iters)
    terms["proto"] = proto
    parts.append(("proto", obj.proto_weight, proto))
    labels = (q_a + q_b).argmax(1)  # [Bg] semantic label of each video
    # distinct labels, counted on the device: `unique` would wait for the GPU to learn its output size
    terms["n_clusters"] = torch.zeros(out["logits"].shape[-1], device=labels.device).index_fill_(0, labels, 1).sum()

    if use_graph:
        graph = infer_graph(sim, labels, obj.thres)  # [Bg, Bg]
        for level in WEIGHT_ORDER:
            term = graph_constraint(out[f"{level}_g"][:, :2], graph, tau)
            terms[f"graph_{level}"] = term
            parts.append(("graph", weights[level], term))

    total = None
    for switch, weight, term in parts:
        if switch in obj.terms:
            total = weight * term if total is None else total + weight * term
    if total is None:  # only terms that are not on yet (the graph before --split): nothing to learn this step
        total = 0.0 * inst
    return total, {name: value.detach() for name, value in terms.items()}
