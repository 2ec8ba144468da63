"""Tests of models/temporal.py against small loop references."""
import math

import pytest
import torch

from models import MotionExcitation, pool_time, stack_reversed


def test_stack_reversed_rows():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 2, 2)
    out = stack_reversed(x)
    assert out.shape == (6, 4, 5, 2, 2)
    for i in range(3):
        for t in range(5):
            assert torch.equal(out[i, :, t], x[i, :, t])
            assert torch.equal(out[3 + i, :, t], x[i, :, 4 - t])


@pytest.mark.parametrize("t,steps", [(8, 4), (3, 2), (1, 2)])
def test_pool_time_matches_loop(t, steps):
    torch.manual_seed(0)
    x = torch.randn(2, 3, t, 4, 5)
    out = pool_time(x, steps)
    assert out.shape == (2, 3, steps)
    for i in range(steps):
        lo, hi = math.floor(i * t / steps), math.ceil((i + 1) * t / steps)
        expected = x[:, :, lo:hi].mean(dim=(2, 3, 4))
        assert torch.allclose(out[:, :, i], expected, atol=1e-6)


@pytest.mark.parametrize("channels,count", [(128, 2392), (256, 8880)])
def test_motion_excitation_parameter_count(channels, count):
    assert sum(p.numel() for p in MotionExcitation(channels).parameters()) == count


def bn_eval(x, bn):
    """Eval-mode batch norm over axis 0 of a per-position channel vector, written out."""
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def test_motion_excitation_matches_loop():
    torch.manual_seed(0)
    c, r, t, h, w = 32, 2, 4, 3, 3
    me = MotionExcitation(c)
    for bn in (me.reduce_bn, me.expand_bn):  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    me.eval()
    x = torch.randn(2, c, t, h, w)
    with torch.no_grad():
        out = me(x)
    w_reduce = me.reduce.weight.reshape(r, c)
    w_dw = me.transform.weight.reshape(r, 3, 3)
    w_expand = me.expand.weight.reshape(c, r)
    expected = torch.empty_like(x)
    for n in range(2):
        # reduced features, one channel vector per (step, y, x)
        red = torch.zeros(t, h, w, r)
        for s in range(t):
            for i in range(h):
                for j in range(w):
                    red[s, i, j] = bn_eval(w_reduce @ x[n, :, s, i, j], me.reduce_bn)
        for s in range(t):
            motion = torch.zeros(r)
            if s + 1 < t:
                for k in range(r):  # depthwise 3x3 with zero padding at step s+1, minus step s
                    padded = torch.nn.functional.pad(red[s + 1, :, :, k], (1, 1, 1, 1))
                    conv = torch.zeros(h, w)
                    for i in range(h):
                        for j in range(w):
                            conv[i, j] = (padded[i:i + 3, j:j + 3] * w_dw[k]).sum()
                    motion[k] = (conv - red[s, :, :, k]).mean()
            m = torch.sigmoid(bn_eval(w_expand @ motion, me.expand_bn)) - 0.5  # [c]
            expected[n, :, s] = x[n, :, s] * (1 + m[:, None, None])
    assert torch.allclose(out, expected, atol=1e-5)


def test_motion_excitation_is_identity_without_motion_at_last_step():
    # the last step has zero motion, so its scale is sigmoid(BN(0)) - 0.5 = sigmoid(bias) - 0.5
    torch.manual_seed(0)
    me = MotionExcitation(16).eval()
    x = torch.randn(1, 16, 3, 2, 2)
    with torch.no_grad():
        out = me(x)
    assert torch.allclose(out[:, :, -1], x[:, :, -1], atol=1e-6)  # bias 0 -> scale 0
    assert not torch.allclose(out[:, :, 0], x[:, :, 0], atol=1e-3)


@pytest.mark.parametrize("train", [True, False])
def test_pooled_with_reversed_equals_pooling_the_excited_stack(train):
    """The shortcut (spatial means scaled by 1 + m, the reduction run once and flipped) gives the values,
    the input and parameter gradients and the BatchNorm running statistics of the direct computation."""
    torch.manual_seed(0)
    fast, slow = MotionExcitation(32), MotionExcitation(32)
    slow.load_state_dict(fast.state_dict())
    fast.train(train), slow.train(train)
    x = torch.randn(3, 32, 8, 5, 6, requires_grad=True)
    weights = torch.randn(6, 32, 4)  # a loss that weighs every output differently
    got = fast.pooled_with_reversed(x, 4)
    want = pool_time(slow(stack_reversed(x)), 4)
    assert got.shape == (6, 32, 4) and torch.allclose(got, want, atol=1e-6)
    grad_got = torch.autograd.grad((got * weights).sum(), [x, *fast.parameters()])
    grad_want = torch.autograd.grad((want * weights).sum(), [x, *slow.parameters()])
    for a, b in zip(grad_got, grad_want):
        assert torch.allclose(a, b, atol=1e-5)
    for (name, a), b in zip(fast.named_buffers(), slow.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
