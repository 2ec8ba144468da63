"""Prototype swap (docs/method.md §3, SwAV-style): Sinkhorn codes, swapped prediction, FIFO bank."""

import torch
import torch.nn as nn

from engine.distributed import all_gather_no_grad, all_gather_with_grad

from ._checks import check_shape, in_float32


@in_float32
@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, n_iters: int = 3) -> torch.Tensor:
    """Balanced soft assignments of N samples to K prototypes (no gradient).

    scores: [N, K]. Q = exp((scores − max)/ε) normalised to total 1; each iteration
    scales the prototypes (rows of Qᵀ) to sum 1/K, then the samples to sum 1/N.
    Returns q [N, K], each row summing to 1. Computed in float64 (exp of scores far below
    the max would underflow in float32) and returned in the dtype of ``scores``.
    """
    check_shape("scores", scores, "[N, K]", 2, {})
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1 (the last step makes rows sum to 1), got {n_iters}")
    n, k = scores.shape
    q = scores.to(torch.float64, copy=True)  # [N, K], updated in place below
    q.sub_(q.max()).div_(eps).exp_()  # exp((scores - max) / eps)
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(0, keepdim=True) * k  # prototypes: columns sum to 1/K
        q /= q.sum(1, keepdim=True) * n  # samples: rows sum to 1/N
    return (q * n).to(scores.dtype)


@in_float32
def prototype_swap(logits: torch.Tensor, bank: torch.Tensor, tau: float = 0.1, eps: float = 0.05,
                   n_iters: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Swapped prototype prediction L_proto between clips a and b.

    logits: local [B, 2, K] prototype cosines of clips a, b (gathered with gradient);
    bank: [N, 2, K] whose last B_global rows are this global batch (see ``PrototypeBank``).
    q_a, q_b = ``sinkhorn(bank[:, c])`` restricted to the last B_global rows [B_global, K];
    with p_c = softmax(logits[:, c]/τ): loss = mean over videos of
    −½(Σ_k q_b log(p_a + 1e-10) + Σ_k q_a log(p_b + 1e-10)). Returns (loss, q_a, q_b);
    the semantic label of a video is argmax(q_a + q_b).
    """
    check_shape("logits", logits, "[B, 2, K]", 3, {1: 2})
    logits = all_gather_with_grad(logits)  # [Bg, 2, K]; a collective: every rank, every step
    batch, _, k = logits.shape
    check_shape("bank", bank, f"[N, 2, K] with K = {k}", 3, {1: 2, 2: k})
    if bank.shape[0] < batch:
        raise ValueError(f"bank must hold at least the global batch ({batch} rows) as its last rows, "
                         f"got {list(bank.shape)}; push the batch before reading the bank")
    q_a = sinkhorn(bank[:, 0], eps, n_iters)[-batch:]  # [Bg, K]
    q_b = sinkhorn(bank[:, 1], eps, n_iters)[-batch:]  # [Bg, K]
    p = torch.softmax(logits / tau, dim=-1)  # [Bg, 2, K]
    cross = (q_b * torch.log(p[:, 0] + 1e-10)).sum(1) + (q_a * torch.log(p[:, 1] + 1e-10)).sum(1)  # [Bg]
    return -0.5 * cross.mean(), q_a, q_b


class PrototypeBank(nn.Module):
    """FIFO queue of the last ``size`` global-batch prototype logits, detached.

    Buffer ``queue`` [size, 2, K], initialised N(0, 1) from ``generator`` (pass generators
    seeded alike so every rank builds the same bank). Part of ``state_dict`` so that
    checkpoints restore it; move it with ``.to(device)``.
    """

    def __init__(self, size: int = 1024, cluster: int = 1000, generator: torch.Generator | None = None):
        super().__init__()
        if size < 1 or cluster < 1:
            raise ValueError(f"PrototypeBank needs size >= 1 and cluster >= 1, got size={size}, cluster={cluster}")
        self.register_buffer("queue", torch.randn(size, 2, cluster, generator=generator))  # [size, 2, K]
        self.last = 0  # rows of the latest push

    def push(self, global_logits: torch.Tensor) -> None:
        """Append ``global_logits`` [B_global, 2, K] (detached) at the end, dropping the oldest rows."""
        size, _, k = self.queue.shape
        check_shape("global_logits", global_logits, f"[B_global, 2, {k}] with B_global <= {size}", 3,
                    {1: 2, 2: k})
        batch = global_logits.shape[0]
        if batch > size:
            raise ValueError(f"global_logits must have shape [B_global, 2, {k}] with B_global <= {size} "
                             f"(the bank size), got {list(global_logits.shape)}")
        new = global_logits.detach().to(self.queue)  # [Bg, 2, K]
        self.queue.copy_(torch.cat([self.queue[batch:], new]))  # [size, 2, K]
        self.last = batch

    def push_local(self, logits: torch.Tensor) -> None:
        """Gather every worker's ``logits`` [B, 2, K] (no gradient) and :meth:`push` the global batch.

        A collective under ``torch.distributed``: every rank calls it, so every rank's bank stays equal.
        """
        self.push(all_gather_no_grad(logits.detach()))  # [Bg, 2, K]; a collective: every rank, every step

    def read(self, use_queue: bool) -> torch.Tensor:
        """The whole queue [size, 2, K], or only the rows of the latest push [B_global, 2, K]."""
        if self.last == 0:
            raise RuntimeError("PrototypeBank.read before any push: push the global batch's logits first")
        return self.queue if use_queue else self.queue[-self.last:]
