"""Tests of losses.total: wiring and weights of the MFO objective (pure), the bank push, 2 workers."""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from losses import (TERMS, Objective, PrototypeBank, graph_constraint, infer_graph, instance_contrast, mfo_objective,
                    sinkhorn,
                    motion_contrast, prototype_swap, temporal_alignment)
from tests.two_workers import run_on_two_workers

WORLD, LOCAL, DIM, C, K, BANK = 2, 3, 4, 5, 6, 8
SHAPES = {"high": (3, C), "high_t": (3, C, 2), "mid": (2, 3, C), "mid_t": (3, C, 4), "low": (2, 3, C),
          "low_t": (3, C, 8), "logits": (2, K), "high_g": (3, C), "mid_g": (3, C), "low_g": (3, C)}


class _Heads(torch.nn.Module):
    """Stand-in for the model: one linear map per output, shaped like the MFO outputs."""

    def __init__(self, gen):
        super().__init__()
        self.maps = torch.nn.ModuleDict({key: torch.nn.Linear(DIM, torch.Size(shape).numel())
                                         for key, shape in SHAPES.items()})
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) / 2)

    def forward(self, x):  # x [B, DIM]
        out = {key: self.maps[key](x).view(-1, *shape) for key, shape in SHAPES.items()}
        for key in ("mid", "low"):
            out[key] = torch.cat([out[key][:, 0], out[key][:, 1]])  # [2B, 3, C]: forward rows, then reversed
        return out


def _random_out(batch, seed):
    gen = torch.Generator().manual_seed(seed)
    return _Heads(gen)(torch.randn(batch, DIM, generator=gen))


def test_total_is_the_weighted_sum_of_the_terms():
    out = _random_out(4, 0)
    bank = PrototypeBank(size=BANK, cluster=K, generator=torch.Generator().manual_seed(1))
    before = bank.queue.clone()
    bank.push_local(out["logits"])
    assert torch.equal(bank.queue, torch.cat([before[4:], out["logits"].detach()]))
    loss, terms = mfo_objective(out, bank.read(use_queue=True), use_graph=True)
    assert torch.equal(bank.queue, torch.cat([before[4:], out["logits"].detach()]))  # the loss leaves it alone
    # every term again from the public functions, with the slicing and the weights of docs/method.md §3
    inst, inst_acc, sim = instance_contrast(out["high"][:, :2])
    align = {lvl: temporal_alignment(out[f"{lvl}_t"]) for lvl in ("high", "mid", "low")}
    motion = {lvl: motion_contrast(out[lvl][:4, :2], out[lvl][4:, :2]) for lvl in ("mid", "low")}
    proto, q_a, q_b = prototype_swap(out["logits"], bank.queue, tau=0.1)
    labels = (q_a + q_b).argmax(1)
    graph = infer_graph(sim, labels, thres=0.05)
    graph_terms = {lvl: graph_constraint(out[f"{lvl}_g"][:, :2], graph) for lvl in ("high", "mid", "low")}
    want = (inst + align["high"][0] + graph_terms["high"] + 0.5 * graph_terms["mid"] + 0.3 * graph_terms["low"]
            + 0.5 * (motion["mid"][0] + align["mid"][0]) + 0.3 * (motion["low"][0] + align["low"][0]) + 0.5 * proto)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(terms["inst"], inst.detach())
    torch.testing.assert_close(terms["inst_acc"], inst_acc)
    torch.testing.assert_close(terms["motion_low_acc"], motion["low"][1])
    torch.testing.assert_close(terms["align_mid"], align["mid"][0].detach())
    torch.testing.assert_close(terms["proto"], proto.detach())
    torch.testing.assert_close(terms["graph_low"], graph_terms["low"].detach())
    assert terms["n_clusters"].item() == len(set(labels.tolist()))
    assert all(not value.requires_grad and value.dim() == 0 for value in terms.values())


def test_switches_graph_and_queue():
    out = _random_out(4, 2)
    bank = PrototypeBank(size=BANK, cluster=K, generator=torch.Generator().manual_seed(3))
    bank.push_local(out["logits"])
    loss, terms = mfo_objective(out, bank.read(use_queue=False), use_graph=False)
    assert not any(name.startswith("graph") for name in terms)
    assert set(terms) >= {"inst", "inst_acc", "align_high", "align_high_acc", "motion_mid", "motion_mid_acc",
                          "align_low", "motion_low", "proto", "n_clusters"}
    proto, _, _ = prototype_swap(out["logits"], out["logits"].detach(), tau=0.1)  # bank = this batch only
    torch.testing.assert_close(terms["proto"], proto.detach())
    want = (terms["inst"] + terms["align_high"] + 0.5 * (terms["motion_mid"] + terms["align_mid"])
            + 0.3 * (terms["motion_low"] + terms["align_low"]) + 0.5 * terms["proto"])
    torch.testing.assert_close(loss.detach(), want)


def test_gradient_reaches_every_output():
    gen = torch.Generator().manual_seed(4)
    out = {key: torch.randn(4, *shape, generator=gen) for key, shape in SHAPES.items()}
    out["mid"], out["low"] = out["mid"].flatten(0, 1), out["low"].flatten(0, 1)  # [2B, 3, C]
    out = {key: value.requires_grad_() for key, value in out.items()}
    bank = PrototypeBank(size=BANK, cluster=K)
    bank.push_local(out["logits"])
    loss, _ = mfo_objective(out, bank.read(use_queue=True), use_graph=True)
    loss.backward()
    assert all(out[key].grad.abs().sum() > 0 for key in out)
    assert out["high"].grad[:, 2].abs().sum() == 0  # contrast terms use clips a, b only


def test_bad_outputs_raise():
    out = _random_out(4, 5)
    bank = PrototypeBank(size=BANK, cluster=K).queue
    with pytest.raises(ValueError, match=r"lacks \['low_g'\]"):
        mfo_objective({k: v for k, v in out.items() if k != "low_g"}, bank, use_graph=True)
    with pytest.raises(ValueError, match=r"out\['mid'\] must have shape \[2B, 3, C\] with B = 4"):
        mfo_objective({**out, "mid": out["mid"][:4]}, bank, use_graph=True)


def _steps(model, heads, x):
    """Two steps (graph off and batch-only bank, then graph on and whole queue): values, terms, grads, bank."""
    bank = PrototypeBank(size=BANK, cluster=K, generator=torch.Generator().manual_seed(6))
    res = []
    for use_graph, use_queue, shift in ((False, False, 0.0), (True, True, 0.5)):
        heads.zero_grad()
        out = model(x + shift)
        bank.push_local(out["logits"])
        loss, terms = mfo_objective(out, bank.read(use_queue), use_graph=use_graph)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in heads.parameters() if p.grad is not None])
        res.append((loss.detach(), terms, grads, bank.queue.clone()))
    return res


def _worker(rank):
    gen = torch.Generator().manual_seed(7)
    heads, x = _Heads(gen), torch.randn(WORLD * LOCAL, DIM, generator=gen)
    # the graph heads are unused in the first step (before --split), hence find_unused_parameters
    model = DistributedDataParallel(heads, find_unused_parameters=True)
    return _steps(model, heads, x[rank * LOCAL:(rank + 1) * LOCAL])


def test_two_workers_equal_one_process(tmp_path):
    res = run_on_two_workers(_worker, tmp_path=tmp_path)
    gen = torch.Generator().manual_seed(7)
    heads, x = _Heads(gen), torch.randn(WORLD * LOCAL, DIM, generator=gen)
    single = _steps(heads, heads, x)
    for got in res:
        for (loss, terms, grads, queue), (want_loss, want_terms, want_grads, want_queue) in zip(got, single):
            torch.testing.assert_close(loss, want_loss)
            assert terms.keys() == want_terms.keys()
            for name in terms:
                torch.testing.assert_close(terms[name], want_terms[name])
            torch.testing.assert_close(grads, want_grads)
            torch.testing.assert_close(queue, want_queue)


def _reference_total(out, bank, tau=0.07, weights=(1.0, 0.5, 0.3), proto_weight=0.5, proto=(0.1, 0.05, 3),
                     thres=0.05, use_graph=True):
    """The objective summed term by term from the public functions, in the order of docs/method.md §3's formula."""
    w = dict(zip(("high", "mid", "low"), weights))
    inst, _, sim = instance_contrast(out["high"][:, :2], tau)
    total = w["high"] * inst
    for lvl in ("high", "mid", "low"):
        total = total + w[lvl] * temporal_alignment(out[f"{lvl}_t"], tau)[0]
    for lvl in ("mid", "low"):
        total = total + w[lvl] * motion_contrast(out[lvl][:4, :2], out[lvl][4:, :2], tau)[0]
    loss, q_a, q_b = prototype_swap(out["logits"], bank, *proto)
    total = total + proto_weight * loss
    if use_graph:
        graph = infer_graph(sim, (q_a + q_b).argmax(1), thres)
        for lvl in ("high", "mid", "low"):
            total = total + w[lvl] * graph_constraint(out[f"{lvl}_g"][:, :2], graph, tau)
    return total


def test_default_objective_is_the_paper_total_bit_for_bit():
    out = _random_out(4, 11)
    bank = PrototypeBank(size=BANK, cluster=K, generator=torch.Generator().manual_seed(2))
    bank.push_local(out["logits"])
    for use_graph in (False, True):
        loss, _ = mfo_objective(out, bank.read(True), use_graph=use_graph)
        assert torch.equal(loss, _reference_total(out, bank.read(True), use_graph=use_graph))
    assert Objective() == Objective(terms=("inst", "motion", "align", "proto", "graph"), tau=0.07, proto_tau=0.1,
                                    sk_eps=0.05, sk_iters=3, level_weights=(1.0, 0.5, 0.3), proto_weight=0.5,
                                    thres=0.05)


# which logged terms (and weights) each switch covers, written out by hand from docs/method.md §3
SWITCHED = {"inst": {"inst": 1.0}, "align": {"align_high": 1.0, "align_mid": 0.5, "align_low": 0.3},
            "motion": {"motion_mid": 0.5, "motion_low": 0.3}, "proto": {"proto": 0.5},
            "graph": {"graph_high": 1.0, "graph_mid": 0.5, "graph_low": 0.3}}


@pytest.mark.parametrize("dropped", TERMS)
def test_each_switch_removes_exactly_its_term(dropped):
    out = _random_out(4, 12)
    bank = PrototypeBank(size=BANK, cluster=K, generator=torch.Generator().manual_seed(2))
    bank.push_local(out["logits"])
    full, full_terms = mfo_objective(out, bank.read(True), use_graph=True)
    kept = tuple(t for t in TERMS if t != dropped)
    loss, terms = mfo_objective(out, bank.read(True), use_graph=True, objective=Objective(terms=kept))
    assert terms.keys() == full_terms.keys() and all(torch.equal(terms[k], full_terms[k]) for k in terms)
    removed = sum(weight * terms[name] for name, weight in SWITCHED[dropped].items())
    torch.testing.assert_close(full.detach() - loss.detach(), removed)
    everything = sum(weight * terms[name] for switch in kept for name, weight in SWITCHED[switch].items())
    torch.testing.assert_close(loss.detach(), everything)


def test_a_term_left_out_gets_no_gradient():
    gen = torch.Generator().manual_seed(13)
    out = {key: torch.randn(4, *shape, generator=gen) for key, shape in SHAPES.items()}
    out["mid"], out["low"] = out["mid"].flatten(0, 1), out["low"].flatten(0, 1)
    out = {key: value.requires_grad_() for key, value in out.items()}
    bank = PrototypeBank(size=BANK, cluster=K)
    bank.push_local(out["logits"])
    loss, _ = mfo_objective(out, bank.read(True), use_graph=False, objective=Objective(terms=("inst", "proto")))
    loss.backward()
    assert out["high"].grad.abs().sum() > 0 and out["logits"].grad.abs().sum() > 0
    assert all(out[key].grad is None for key in ("mid", "low", "high_t", "mid_t", "low_t"))
    # the graph alone before --split: nothing enters the total, and nothing breaks
    zero, _ = mfo_objective(out, bank.read(True), use_graph=False, objective=Objective(terms=("graph",)))
    assert zero.item() == 0.0 and zero.requires_grad


def test_constants_reach_their_terms():
    out = _random_out(4, 14)
    bank = PrototypeBank(size=BANK, cluster=K, generator=torch.Generator().manual_seed(2))
    bank.push_local(out["logits"])
    rows = bank.read(True)
    custom = Objective(tau=0.2, proto_tau=0.3, sk_eps=0.1, sk_iters=5, level_weights=(0.7, 0.2, 0.9),
                       proto_weight=1.5, thres=0.2)
    loss, terms = mfo_objective(out, rows, use_graph=True, objective=custom)
    torch.testing.assert_close(terms["inst"], instance_contrast(out["high"][:, :2], 0.2)[0].detach())
    torch.testing.assert_close(terms["proto"], prototype_swap(out["logits"], rows, 0.3, 0.1, 5)[0].detach())
    want = _reference_total(out, rows, tau=0.2, weights=(0.7, 0.2, 0.9), proto_weight=1.5, proto=(0.3, 0.1, 5),
                            thres=0.2)
    torch.testing.assert_close(loss, want)
    assert not torch.allclose(loss, mfo_objective(out, rows, use_graph=True)[0])


def test_the_weights_are_ordered_high_mid_low_the_backbone_levels_reversed():
    """``level_weights`` (and --level_weights) weigh high, mid, low: the backbone's levels, last first."""
    from losses.total import WEIGHT_ORDER
    from models import LEVELS
    assert WEIGHT_ORDER == ("high", "mid", "low") == tuple(reversed(LEVELS))


@pytest.mark.parametrize("bad, message", [
    (dict(terms=("inst", "colour")), "subset of"), (dict(terms=()), "subset of"), (dict(tau=0.0), "tau must be"),
    (dict(sk_iters=0), "sk_iters must be"), (dict(proto_weight=-1.0), "proto_weight must be"),
    (dict(level_weights=(1.0, 0.5)), "3 values"), (dict(level_weights=(1.0, 0.0, 0.3)), "level_weights must be")])
def test_bad_objectives_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Objective(**bad)


def test_every_loss_is_float32_under_autocast():
    """The objective under bfloat16 autocast equals the float32 one on the same outputs (within 1e-3, here
    exactly), term by term; before, its matmuls ran in bfloat16 and the total moved by about 2e-2."""
    out = {k: v.detach() for k, v in _random_out(4, 0).items()}
    bank = torch.cat([torch.randn(BANK - 4, 2, K, generator=torch.Generator().manual_seed(1)), out["logits"]])
    loss, terms = mfo_objective(out, bank, use_graph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_loss, amp_terms = mfo_objective(out, bank, use_graph=True)
        half = {k: v.bfloat16() for k, v in out.items()}  # bfloat16 inputs are computed in float32 too
        q = sinkhorn(bank[:, 0].bfloat16())
        half_loss = mfo_objective(half, bank.bfloat16(), use_graph=True)[0]
    assert amp_loss.dtype == torch.float32 and abs(amp_loss - loss) < 1e-3
    for name, value in terms.items():
        assert abs(amp_terms[name] - value) < 1e-3, name
    assert half_loss.dtype == q.dtype == torch.float32
