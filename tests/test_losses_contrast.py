"""Tests of losses.contrast: instance and motion contrast against plain loops, by hand, on 2 workers."""

import math

import pytest
import torch

from losses import instance_contrast, motion_contrast
from tests.two_workers import ddp_and_one_process, seeded_batch_and_layer

WORLD, LOCAL, DIM, C = 2, 3, 4, 5


def _loop_instance(z, tau, z_rev=None):
    """Loss, acc and sim written as loops over queries (v, i); z_rev adds the motion negatives."""
    zn = z / z.norm(dim=-1, keepdim=True)
    rn = None if z_rev is None else z_rev / z_rev.norm(dim=-1, keepdim=True)
    n = z.shape[0]
    losses, hits = [], []
    for v in range(n):
        for i in range(2):
            q = zn[v, i]
            pos = sum(torch.exp(q @ zn[v, j] / tau) for j in range(2) if j != i)
            neg = sum(torch.exp(q @ zn[w, j] / tau) for w in range(n) if w != v for j in range(2))
            if rn is not None:
                neg = neg + sum(torch.exp(q @ rn[v, j] / tau) for j in range(2))
            losses.append(-torch.log(pos / (pos + neg)))
            hits.append(float(pos > neg))
    sim = torch.zeros(n, n, dtype=z.dtype)
    for v in range(n):
        row = [torch.exp(zn[v, 0] @ zn[w, 1] / tau) for w in range(n)]
        for w in range(n):
            sim[v, w] = row[w] / sum(row)
    return torch.stack(losses).mean(), sum(hits) / len(hits), sim


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_instance_contrast_matches_loop(tau):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(5, 2, C, generator=gen, dtype=torch.float64, requires_grad=True)
    loss, acc, sim = instance_contrast(z, tau=tau)
    (grad,) = torch.autograd.grad(loss, z)
    ref_loss, ref_acc, ref_sim = _loop_instance(z, tau)
    (ref_grad,) = torch.autograd.grad(ref_loss, z)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    assert acc.item() == pytest.approx(ref_acc)
    torch.testing.assert_close(sim, ref_sim)
    assert not sim.requires_grad


def test_motion_contrast_matches_loop():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4, 2, C, generator=gen, dtype=torch.float64, requires_grad=True)
    z_rev = torch.randn(4, 2, C, generator=gen, dtype=torch.float64, requires_grad=True)
    loss, acc = motion_contrast(z, z_rev, tau=0.2)
    grads = torch.autograd.grad(loss, (z, z_rev))
    ref_loss, ref_acc, _ = _loop_instance(z, 0.2, z_rev)
    ref_grads = torch.autograd.grad(ref_loss, (z, z_rev))
    torch.testing.assert_close(loss, ref_loss)
    assert acc.item() == pytest.approx(ref_acc)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_hand_checked_values():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])  # video 0 = e1, video 1 = e2
    # each query: pos = e, neg = 2 exp(0) = 2
    loss, acc, sim = instance_contrast(z, tau=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    assert acc.item() == 1.0
    near, far = math.e / (math.e + 1), 1 / (math.e + 1)
    torch.testing.assert_close(sim, torch.tensor([[near, far], [far, near]]))
    # reversed clips: video 0 gets -e1 (adds 2/e to neg), video 1 gets e1 (adds 2)
    z_rev = torch.stack([torch.stack([-e1, -e1]), torch.stack([e1, e1])])
    loss, acc = motion_contrast(z, z_rev, tau=1.0)
    video0 = math.log(1 + (2 + 2 / math.e) / math.e)
    video1 = math.log(1 + 4 / math.e)
    assert loss.item() == pytest.approx((video0 + video1) / 2, rel=1e-6)
    assert acc.item() == 0.0  # pos = e < neg in both videos


def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match=r"\[B, 2, C\]"):
        instance_contrast(torch.randn(4, 3, C))
    with pytest.raises(ValueError, match=r"\[B, 2, C\]"):
        motion_contrast(torch.randn(4, C), torch.randn(4, C))
    with pytest.raises(ValueError, match="z_rev must have the shape of z"):
        motion_contrast(torch.randn(4, 2, C), torch.randn(3, 2, C))


def _global_inputs():
    """Inputs [WORLD*LOCAL, DIM] and a layer DIM -> 4*C, identical on every rank."""
    gen = torch.Generator().manual_seed(3)
    x, layer = seeded_batch_and_layer(gen, WORLD * LOCAL, DIM, 4 * C)
    return x, layer


def _losses_and_grads(model, layer, x):
    """Value, accuracy and layer gradient of each loss on the embeddings of x."""
    res = {}
    for name in ("instance", "motion"):
        layer.zero_grad()
        z = model(x).view(-1, 2, 2, C)  # [B, fwd/rev, 2 clips, C]
        if name == "instance":
            loss, acc, sim = instance_contrast(z[:, 0], tau=0.1)
            res["sim"] = sim
        else:
            loss, acc = motion_contrast(z[:, 0], z[:, 1], tau=0.1)
        loss.backward()
        res[name] = (loss.detach(), acc, layer.weight.grad.clone(), layer.bias.grad.clone())
    return res


def test_two_workers_equal_one_process(tmp_path):
    res, single = ddp_and_one_process(_global_inputs, _losses_and_grads, tmp_path)
    for got in res:
        torch.testing.assert_close(got["sim"], single["sim"])
        for name in ("instance", "motion"):
            for value, want in zip(got[name], single[name]):
                torch.testing.assert_close(value, want)
