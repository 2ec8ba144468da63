"""Tests of losses.prototypes: Sinkhorn, swapped prediction and the FIFO bank; loops, hand values, 2 workers."""

import math

import pytest
import torch

from losses import PrototypeBank, prototype_swap, sinkhorn
from tests.two_workers import ddp_and_one_process, seeded_batch_and_layer

WORLD, LOCAL, DIM, K, BANK = 2, 3, 4, 7, 10


def _loop_sinkhorn(scores, eps, n_iters):
    """Sinkhorn with explicit loops over samples and prototypes (float64)."""
    n, k = scores.shape
    top = max(scores[i, j].item() for i in range(n) for j in range(k))
    q = [[math.exp((scores[i, j].item() - top) / eps) for j in range(k)] for i in range(n)]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(n_iters):
        for j in range(k):
            col = sum(q[i][j] for i in range(n))
            for i in range(n):
                q[i][j] /= col * k
        for i in range(n):
            row = sum(q[i])
            q[i] = [x / (row * n) for x in q[i]]
    return torch.tensor(q, dtype=torch.float64) * n


def test_sinkhorn_matches_loop_and_marginals():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 4, generator=gen) * 2 - 1  # cosines
    q = sinkhorn(scores, eps=0.05, n_iters=3)
    assert q.dtype == scores.dtype and not q.requires_grad
    torch.testing.assert_close(q.double(), _loop_sinkhorn(scores, 0.05, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(1), torch.ones(6))  # every sample sums to 1
    converged = sinkhorn(scores, eps=0.05, n_iters=200)
    torch.testing.assert_close(converged.sum(0), torch.full((4,), 6 / 4))  # prototypes share the samples equally
    torch.testing.assert_close(sinkhorn(scores + 3.0), q)  # the max subtraction makes it shift-invariant


def test_sinkhorn_hand_checked_and_far_scores():
    # Q ∝ [[4,1],[1,1]] / 7; columns to 1/2: [[.4,.25],[.1,.25]]; rows to 1/2, times N = 2
    q = sinkhorn(torch.log(torch.tensor([[4.0, 1.0], [1.0, 1.0]])), eps=1.0, n_iters=1)
    torch.testing.assert_close(q, torch.tensor([[8 / 13, 5 / 13], [2 / 7, 5 / 7]]))
    # N(0,1) bank rows give exp((s - max)/0.05) below the float32 range: must stay finite
    far = torch.tensor([[4.0, -4.0, 0.0], [-4.0, 4.0, -3.5], [3.0, -4.0, -4.0]])
    q = sinkhorn(far)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(3))


def _loop_swap(logits, q_a, q_b, tau):
    """Swapped prediction loss, one video and one prototype at a time."""
    total = 0.0
    for v in range(logits.shape[0]):
        p_a = torch.softmax(logits[v, 0] / tau, 0)
        p_b = torch.softmax(logits[v, 1] / tau, 0)
        cross = sum(q_b[v, k] * torch.log(p_a[k] + 1e-10) + q_a[v, k] * torch.log(p_b[k] + 1e-10)
                    for k in range(logits.shape[2]))
        total = total - 0.5 * cross
    return total / logits.shape[0]


def test_prototype_swap_matches_loop():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.rand(4, 2, K, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    bank = torch.cat([torch.randn(5, 2, K, generator=gen, dtype=torch.float64), logits.detach()])  # batch last
    loss, q_a, q_b = prototype_swap(logits, bank, tau=0.1)
    (grad,) = torch.autograd.grad(loss, logits)
    want_a = _loop_sinkhorn(bank[:, 0], 0.05, 3)[-4:]
    want_b = _loop_sinkhorn(bank[:, 1], 0.05, 3)[-4:]
    torch.testing.assert_close(q_a, want_a)
    torch.testing.assert_close(q_b, want_b)
    ref = _loop_swap(logits, want_a, want_b, 0.1)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_prototype_swap_hand_checked():
    # one video and a one-row bank: the codes are uniform, q = [1/2, 1/2]
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    loss, q_a, q_b = prototype_swap(logits, logits, tau=1.0)
    torch.testing.assert_close(q_a, torch.tensor([[0.5, 0.5]]))
    p_a = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax([1, 0]); p_b = [1/2, 1/2]
    want = -0.5 * (0.5 * math.log(p_a[0]) + 0.5 * math.log(p_a[1]) + math.log(0.5))
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        sinkhorn(torch.randn(3))
    with pytest.raises(ValueError, match="n_iters must be >= 1"):
        sinkhorn(torch.randn(3, 2), n_iters=0)
    with pytest.raises(ValueError, match=r"\[B, 2, K\]"):
        prototype_swap(torch.randn(4, K), torch.randn(8, 2, K))
    with pytest.raises(ValueError, match=rf"\[N, 2, K\] with K = {K}"):
        prototype_swap(torch.randn(4, 2, K), torch.randn(8, 2, K + 1))
    with pytest.raises(ValueError, match="at least the global batch"):
        prototype_swap(torch.randn(4, 2, K), torch.randn(3, 2, K))


def test_bank_push_read_and_state():
    bank = PrototypeBank(size=6, cluster=K, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(bank.queue, torch.randn(6, 2, K, generator=torch.Generator().manual_seed(2)))
    start = bank.queue.clone()
    first, second = torch.randn(2, 2, K, requires_grad=True), torch.randn(3, 2, K)
    bank.push(first)
    assert torch.equal(bank.read(use_queue=False), first.detach()) and not bank.queue.requires_grad
    assert torch.equal(bank.read(use_queue=True), torch.cat([start[2:], first.detach()]))
    bank.push(second)  # the oldest rows leave first
    assert torch.equal(bank.read(use_queue=True), torch.cat([start[5:], first.detach(), second]))
    assert torch.equal(bank.read(use_queue=False), second)
    restored = PrototypeBank(size=6, cluster=K)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.queue, bank.queue)


def test_bank_errors():
    bank = PrototypeBank(size=4, cluster=K)
    with pytest.raises(RuntimeError, match="before any push"):
        bank.read(use_queue=False)
    with pytest.raises(ValueError, match=rf"\[B_global, 2, {K}\]"):
        bank.push(torch.randn(2, 2, K + 1))
    with pytest.raises(ValueError, match="B_global <= 4"):
        bank.push(torch.randn(5, 2, K))
    with pytest.raises(ValueError, match="size >= 1"):
        PrototypeBank(size=0, cluster=K)


def _global_inputs():
    """Inputs [WORLD*LOCAL, DIM] and a layer DIM -> 2*K, identical on every rank."""
    gen = torch.Generator().manual_seed(5)
    x, layer = seeded_batch_and_layer(gen, WORLD * LOCAL, DIM, 2 * K, scale=1 / 3)
    return x, layer


def _loss_and_grads(model, layer, x):
    """Push the gathered logits to a fresh bank, then the swap loss over the whole bank."""
    bank = PrototypeBank(size=BANK, cluster=K, generator=torch.Generator().manual_seed(6))
    logits = model(x).view(-1, 2, K)  # [B, 2, K]
    bank.push_local(logits)  # gathers every worker's logits without gradient
    loss, q_a, q_b = prototype_swap(logits, bank.read(use_queue=True), tau=0.1)
    loss.backward()
    return loss.detach(), q_a, q_b, bank.queue, layer.weight.grad, layer.bias.grad


def test_two_workers_equal_one_process(tmp_path):
    res, single = ddp_and_one_process(_global_inputs, _loss_and_grads, tmp_path)
    for got in res:
        for value, want in zip(got, single):
            torch.testing.assert_close(value, want)
