"""Tests of losses.alignment: temporal alignment against a plain loop, by hand, on 2 workers."""

import math

import pytest
import torch

from losses import temporal_alignment
from tests.two_workers import ddp_and_one_process, seeded_batch_and_layer

WORLD, LOCAL, DIM, C, STEPS = 2, 3, 4, 5, 4


def _loop_alignment(u, tau):
    """Loss and acc of temporal alignment, one video and one step at a time."""
    n, _, _, steps = u.shape
    half = steps // 2
    losses, hits = [], []
    for v in range(n):
        # average pairs of neighbouring steps of a and of b, then put them one after the other
        o = [(u[v, clip, :, 2 * m] + u[v, clip, :, 2 * m + 1]) / 2 for clip in (0, 1) for m in range(half)]
        g = [u[v, 2, :, m] for m in range(steps)]
        o = [x / x.norm() for x in o]
        g = [x / x.norm() for x in g]
        for queries, keys in ((o, g), (g, o)):
            for m in range(steps):
                logits = torch.stack([queries[m] @ keys[k] / tau for k in range(steps)])
                losses.append(-torch.log(torch.exp(logits[m]) / torch.exp(logits).sum()))
                hits.append(float(all(logits[m] > logits[k] for k in range(steps) if k != m)))
    return torch.stack(losses).mean(), sum(hits) / len(hits)


@pytest.mark.parametrize("steps", [2, 8])
def test_matches_loop(steps):
    gen = torch.Generator().manual_seed(steps)
    u = torch.randn(3, 3, C, steps, generator=gen, dtype=torch.float64, requires_grad=True)
    loss, acc = temporal_alignment(u, tau=0.1)
    (grad,) = torch.autograd.grad(loss, u)
    ref_loss, ref_acc = _loop_alignment(u, 0.1)
    (ref_grad,) = torch.autograd.grad(ref_loss, u)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    assert acc.item() == pytest.approx(ref_acc)


def test_hand_checked_value():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # L = 2: o = [pool(a), pool(b)] = [e1, e2]; g = [e1, -e2]; o·g = diag(1, -1)
    u = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2]), torch.stack([e1, -e2])]).transpose(1, 2)[None]
    loss, acc = temporal_alignment(u, tau=1.0)
    # step 0: logits [1, 0] -> log(1 + 1/e); step 1: logits [0, -1] -> log(1 + e); same in both directions
    assert loss.item() == pytest.approx((math.log(1 + 1 / math.e) + math.log(1 + math.e)) / 2, rel=1e-6)
    assert acc.item() == 0.5


def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match=r"\[B, 3, C, L\]"):
        temporal_alignment(torch.randn(2, 2, C, 4))
    with pytest.raises(ValueError, match="L even"):
        temporal_alignment(torch.randn(2, 3, C, 3))


def _global_inputs():
    """Inputs [WORLD*LOCAL, DIM] and a layer DIM -> 3*C*STEPS, identical on every rank."""
    gen = torch.Generator().manual_seed(4)
    x, layer = seeded_batch_and_layer(gen, WORLD * LOCAL, DIM, 3 * C * STEPS)
    return x, layer


def _loss_and_grads(model, layer, x):
    loss, acc = temporal_alignment(model(x).view(-1, 3, C, STEPS), tau=0.1)
    loss.backward()
    return loss.detach(), acc, layer.weight.grad, layer.bias.grad


def test_two_workers_equal_one_process(tmp_path):
    res, single = ddp_and_one_process(_global_inputs, _loss_and_grads, tmp_path)
    for got in res:
        for value, want in zip(got, single):
            torch.testing.assert_close(value, want)
