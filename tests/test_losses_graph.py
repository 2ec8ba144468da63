"""Tests of losses.graph: infer_graph and graph_constraint against loops, by hand, on 2 workers."""

import math

import pytest
import torch

from losses import graph_constraint, infer_graph
from tests.two_workers import ddp_and_one_process, seeded_batch_and_layer

WORLD, LOCAL, DIM, C = 2, 3, 4, 5


def _loop_graph(sim, labels, thres):
    n = sim.shape[0]
    graph = torch.zeros(n, n, dtype=sim.dtype)
    for i in range(n):
        for j in range(n):
            if labels[i] == labels[j] and (i == j or sim[i, j] >= thres):
                graph[i, j] = sim[i, j]
        graph[i] = graph[i] / graph[i].sum()
    return graph


def test_infer_graph_matches_loop():
    gen = torch.Generator().manual_seed(0)
    sim = torch.softmax(torch.randn(8, 8, generator=gen) * 2, dim=1)
    labels = torch.randint(0, 3, (8,), generator=gen)
    graph = infer_graph(sim, labels, thres=0.1)
    torch.testing.assert_close(graph, _loop_graph(sim, labels, 0.1))
    torch.testing.assert_close(graph.sum(1), torch.ones(8))
    assert (graph.diagonal() > 0).all()


def test_infer_graph_hand_checked():
    sim = torch.tensor([[0.5, 0.3, 0.2], [0.04, 0.9, 0.06], [0.45, 0.45, 0.1]])
    graph = infer_graph(sim, torch.tensor([0, 0, 1]), thres=0.2)
    # row 0: other label drops 0.2 -> [.5, .3] / .8; row 1: 0.04 < thres; row 2: only its diagonal (0.1 < thres)
    torch.testing.assert_close(graph, torch.tensor([[0.625, 0.375, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def _loop_constraint(z, graph, tau):
    zn = z / z.norm(dim=-1, keepdim=True)
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        row = [torch.exp(zn[i, 0] @ zn[j, 1] / tau) for j in range(n)]
        for j in range(n):
            total = total - torch.log(row[j] / sum(row) + 1e-10) * graph[i, j]
    return total / (n * n)


def test_graph_constraint_matches_loop():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, 2, C, generator=gen, dtype=torch.float64, requires_grad=True)
    graph = torch.softmax(torch.randn(5, 5, generator=gen, dtype=torch.float64), dim=1)
    loss = graph_constraint(z, graph, tau=0.07)
    (grad,) = torch.autograd.grad(loss, z)
    ref = _loop_constraint(z, graph, 0.07)
    (ref_grad,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_graph_constraint_hand_checked():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])
    # P = [[e, 1], [1, e]] / (e + 1); G = I: two entries of -log(e/(e+1)), averaged over 4 entries
    loss = graph_constraint(z, torch.eye(2), tau=1.0)
    assert loss.item() == pytest.approx(2 * math.log(1 + 1 / math.e) / 4, rel=1e-6)


def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match=r"sim must have shape \[N, N\]"):
        infer_graph(torch.rand(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] with N = 3"):
        infer_graph(torch.rand(3, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 2, C\]"):
        graph_constraint(torch.randn(3, 3, C), torch.eye(3))
    with pytest.raises(ValueError, match="B_global = 3"):
        graph_constraint(torch.randn(3, 2, C), torch.eye(4))


def _global_inputs():
    """Inputs [WORLD*LOCAL, DIM], a layer DIM -> 2*C and a graph, identical on every rank."""
    gen = torch.Generator().manual_seed(2)
    x, layer = seeded_batch_and_layer(gen, WORLD * LOCAL, DIM, 2 * C)
    graph = infer_graph(torch.softmax(torch.randn(WORLD * LOCAL, WORLD * LOCAL, generator=gen), dim=1),
                        torch.tensor([0, 1] * LOCAL), thres=0.05)
    return x, layer, graph


def _loss_and_grads(model, layer, x, graph):
    loss = graph_constraint(model(x).view(-1, 2, C), graph, tau=0.1)
    loss.backward()
    return loss.detach(), layer.weight.grad, layer.bias.grad


def test_two_workers_equal_one_process(tmp_path):
    res, single = ddp_and_one_process(_global_inputs, _loss_and_grads, tmp_path)
    for got in res:
        for value, want in zip(got, single):
            torch.testing.assert_close(value, want)
