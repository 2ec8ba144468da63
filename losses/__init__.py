"""MFO losses (docs/method.md §3). Each takes the local batch and gathers across workers itself."""

from .alignment import temporal_alignment
from .contrast import instance_contrast, motion_contrast
from .graph import graph_constraint, infer_graph
from .prototypes import PrototypeBank, prototype_swap, sinkhorn
from .total import TERMS, Objective, mfo_objective

__all__ = [
    "TERMS",
    "Objective",
    "PrototypeBank",
    "graph_constraint",
    "infer_graph",
    "instance_contrast",
    "mfo_objective",
    "motion_contrast",
    "prototype_swap",
    "sinkhorn",
    "temporal_alignment",
]
