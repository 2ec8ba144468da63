"""Tests of models/mfo.py: parameter counts, output table, feature-level reversal, gradients, prototypes."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import MFOModel, pool_time


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MFOModel()  # r3d18, channel 128, cluster 1000


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_authors_model(model):
    trunk, me = n_params(model.backbone), n_params(model.me_low) + n_params(model.me_mid)
    assert trunk == 33_203_904
    assert n_params(model.me_low) == 2_392 and n_params(model.me_mid) == 8_880
    assert n_params(model) - trunk - me == 1_837_440


def test_prototypes_and_state_dict_keys(model):
    assert isinstance(model.prototypes, nn.Linear) and model.prototypes.bias is None
    assert model.prototypes.weight.shape == (1000, 128)
    keys = list(model.state_dict())
    assert not any(k.startswith("module.") for k in keys)
    assert set(model.backbone.state_dict()) == {k[len("backbone."):] for k in keys if k.startswith("backbone.")}


def expected_shapes(b, c, k, width=512):
    return {
        "pooled": (b, 3, width),  # the pooled high map of each clip, for monitoring
        "high": (b, 3, c), "high_t": (b, 3, c, 2), "high_g": (b, 3, c),
        "mid": (2 * b, 3, c), "mid_t": (b, 3, c, 4), "mid_g": (b, 3, c),
        "low": (2 * b, 3, c), "low_t": (b, 3, c, 8), "low_g": (b, 3, c),
        "logits": (b, 2, k),
    }


def test_output_table_at_16_frames_112(model):
    torch.manual_seed(0)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 frames: no warning
        with torch.no_grad():
            out = model(torch.randn(1, 3, 3, 16, 112, 112))
    assert {k: tuple(v.shape) for k, v in out.items()} == expected_shapes(1, 128, 1000)


@pytest.mark.parametrize("name", ["s3d", "r2plus1d18"])
def test_output_table_other_backbones_and_cluster(name):
    torch.manual_seed(0)
    net = MFOModel(name, channel=32, cluster=200).eval()
    with pytest.warns(UserWarning, match="8 frames"), torch.no_grad():
        out = net(torch.randn(1, 3, 3, 8, 32, 32))
    width = net.backbone.channels[2]
    assert width == {"s3d": 1024, "r2plus1d18": 512}[name]
    assert {k: tuple(v.shape) for k, v in out.items()} == expected_shapes(1, 32, 200, width)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 3, 8, 32, 32), with_graph=False)
    shapes = {k: v for k, v in expected_shapes(1, 32, 200, width).items() if not k.endswith("_g")}
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes


def test_short_clips_warn_once():
    torch.manual_seed(0)
    net = MFOModel("s3d", channel=16, cluster=10).eval()
    x = torch.randn(1, 3, 3, 8, 32, 32)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        net(x)
        net(x)
    assert [str(w.message).split(":")[0] for w in caught] == ["clips of 8 frames (< 16)"]


@pytest.mark.parametrize("kwargs", [{"channel": 0}, {"cluster": 0}])
def test_bad_sizes_are_rejected(kwargs):
    with pytest.raises(ValueError, match="channel and cluster must be positive"):
        MFOModel("s3d", **kwargs)


def test_bad_input_shape_is_rejected(model):
    with pytest.raises(ValueError, match=r"\[B, 3 clips, 3 channels, T, H, W\].*\(2, 3, 8, 32, 32\)"):
        model(torch.randn(2, 3, 8, 32, 32))


def test_rows_follow_forward_then_reversed_feature_maps(model):
    """Recompute every row from the backbone maps (captured by a hook), one clip at a time."""
    torch.manual_seed(1)
    model.eval()
    b = 2
    x = torch.randn(b, 3, 3, 8, 32, 32)
    captured = {}
    handle = model.backbone.register_forward_hook(lambda m, i, o: captured.update(maps=o))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model(x)
    finally:
        handle.remove()
    low, mid, high = captured["maps"]  # [3B,c,t,h,w], clip (v, c) at row 3v + c
    assert low.shape[0] == 3 * b

    with torch.no_grad():
        for v in range(b):
            for c in range(3):
                row = 3 * v + c
                for name, fmap, me, heads, steps in (
                    ("low", low, model.me_low, model.low_heads, 8),
                    ("mid", mid, model.me_mid, model.mid_heads, 4),
                ):
                    fwd = pool_time(me(fmap[row:row + 1]), steps)  # [1,c,L]
                    rev = pool_time(me(fmap[row:row + 1].flip(2)), steps)
                    assert torch.allclose(out[name][v, c], heads.contrast(fwd)[0].mean(1), atol=1e-5)
                    assert torch.allclose(out[name][b + v, c], heads.contrast(rev)[0].mean(1), atol=1e-5)
                    assert not torch.allclose(out[name][v, c], out[name][b + v, c], atol=1e-3)
                    assert torch.allclose(out[f"{name}_t"][v, c], heads.fine(fwd)[0], atol=1e-5)
                    assert torch.allclose(out[f"{name}_g"][v, c], heads.graph(fwd)[0].mean(1), atol=1e-5)
                hz = pool_time(high[row:row + 1], 2)
                assert torch.allclose(out["high"][v, c], model.high_heads.contrast(hz)[0].mean(1), atol=1e-5)
                assert torch.allclose(out["high_t"][v, c], model.high_heads.fine(hz)[0], atol=1e-5)
                assert torch.allclose(out["high_g"][v, c], model.high_heads.graph(hz)[0].mean(1), atol=1e-5)
                if c < 2:  # logits: cosine of the global embedding with each prototype, clips a and b
                    g = model.global_head(high[row:row + 1].mean(dim=(2, 3, 4)))[0]
                    protos = model.prototypes.weight
                    cosines = torch.stack([(g @ p) / (g.norm() * p.norm()) for p in protos])
                    assert torch.allclose(out["logits"][v, c], cosines, atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = MFOModel("r3d18", channel=16, cluster=10).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = net(torch.randn(1, 3, 3, 8, 32, 32))
    # a random linear read-out of every output the losses use (a plain sum would cancel through BN)
    loss = sum((v * torch.randn_like(v)).sum() for v in out.values())
    loss.backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_normalize_prototypes():
    torch.manual_seed(0)
    net = MFOModel("s3d", channel=8, cluster=5)
    w = net.prototypes.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(5), atol=1e-6)  # normalised at construction
    with torch.no_grad():
        w.mul_(torch.tensor([0.5, 2.0, 3.0, 10.0, 0.1])[:, None])
    before = w.detach().clone()
    net.normalize_prototypes()
    assert w.requires_grad and w.grad_fn is None
    for i in range(5):
        length = sum(float(v) ** 2 for v in before[i]) ** 0.5
        assert torch.allclose(w[i], before[i] / length, atol=1e-6)
    assert torch.allclose(F.normalize(before, dim=1), w, atol=1e-6)


def test_pooled_output_is_the_mean_of_the_high_map(model):
    torch.manual_seed(1)
    model.eval()
    x = torch.randn(2, 3, 3, 16, 32, 32)
    with torch.no_grad():
        out = model(x)
        high = model.backbone(x.flatten(0, 1))[2]  # [6,512,t,h,w]
    torch.testing.assert_close(out["pooled"], high.mean(dim=(2, 3, 4)).view(2, 3, 512))


def test_only_the_backbone_runs_in_low_precision_under_autocast():
    """Under bfloat16 autocast the backbone's maps are bfloat16, everything after it float32: the logits equal
    a float32 global head and prototype layer on the same pooled map (a bfloat16 layer is ~3e-3 off)."""
    torch.manual_seed(0)
    net = MFOModel("r3d18", channel=16, cluster=8).eval()
    seen = {}
    net.backbone.register_forward_hook(lambda module, inputs, output: seen.update(maps=output))
    net.global_head.register_forward_hook(lambda module, inputs, output: seen.update(pooled=inputs[0]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 frames
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(torch.randn(2, 3, 3, 8, 32, 32))
        want = torch.nn.functional.normalize(net.global_head(seen["pooled"].float()), dim=1) @ net.prototypes.weight.T
    assert {m.dtype for m in seen["maps"]} == {torch.bfloat16}
    assert {v.dtype for v in out.values()} == {torch.float32}
    assert (out["logits"].reshape(4, 8) - want).abs().max() < 1e-5
