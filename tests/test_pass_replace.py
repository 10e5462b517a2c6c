"""Unit tests of the RepL pass: identical runs, which blocks to replace, fusion and the Surrogate."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from splitfx.base.errors import ArgumentError
from splitfx.base.meter import SavedTensorMeter, state_keys
from splitfx.passes.cost import probe
from splitfx.passes.cuts import schedule
from splitfx.passes.node_cost import node_cost
from splitfx.passes.replace import Surrogate, choose, fuse, identical_runs
from splitfx.passes.trace import trace
from splitfx.passes.units import Unit, find_units

from tinynets import MLPBlock, Stack


def _analyse(model, x):
    gm = trace(model, (x,))
    P = probe(gm, (x,))
    sched = schedule(P.graph)
    return gm, P, sched, find_units(model, P, sched)


def _runs(model, x=None):
    x = torch.randn(4, 6) if x is None else x
    _, P, sched, units = _analyse(model, x)
    return [[u.name for u in run] for run in identical_runs(model, P, sched, units)]


# --- identical runs ------------------------------------------------------------------------------


def test_a_run_of_identical_blocks_is_found():
    assert _runs(Stack()) == [[f"blocks.{i}" for i in range(5)]]


class OtherBlock(MLPBlock):
    """Same parameters and graph as MLPBlock, another class."""


@pytest.mark.parametrize("odd", [lambda: MLPBlock(sub=True), OtherBlock], ids=["other-graph", "other-class"])
def test_a_different_block_splits_the_run(odd):
    blocks = [MLPBlock(), MLPBlock(), MLPBlock(), odd(), MLPBlock(), MLPBlock(), MLPBlock()]
    assert _runs(Stack(blocks)) == [["blocks.0", "blocks.1", "blocks.2"], ["blocks.4", "blocks.5", "blocks.6"]]


def test_two_identical_blocks_are_no_run():
    assert _runs(Stack([MLPBlock(), MLPBlock(), MLPBlock(sub=True), MLPBlock(), MLPBlock()])) == []


# --- choose --------------------------------------------------------------------------------------


def run_of(*names):
    return [Unit(n, i, i + 1, (1,), (1,)) for i, n in enumerate(names)]


def test_every_second_block_replaces_interior_ones_only():
    result = choose([run_of("b0", "b1", "b2", "b3")], 2)
    assert result.replaced == ["b1"]
    assert result.triples == [("b0", "b1", "b2")]
    assert result.skipped == {"b3": "first or last block of its run", "b2": "not selected"}


def test_every_nth_over_several_runs():
    result = choose([run_of("a0", "a1", "a2", "a3", "a4"), run_of("c0", "c1", "c2")], 2)
    assert result.replaced == ["a1", "a3", "c1"]
    assert result.triples == [("a0", "a1", "a2"), ("a2", "a3", "a4"), ("c0", "c1", "c2")]
    assert result.skipped == {"a2": "not selected"}
    result = choose([run_of("a0", "a1", "a2", "a3", "a4"), run_of("c0", "c1", "c2")], 3)
    assert result.replaced == ["a2"]
    assert result.skipped == {"c2": "first or last block of its run", "a1": "not selected",
                              "a3": "not selected", "c1": "not selected"}


def test_named_blocks_with_reasons_for_the_ones_skipped():
    result = choose([run_of("b0", "b1", "b2", "b3", "b4")], ["b0", "b2", "b3", "head"])
    assert result.replaced == ["b2"]
    assert result.triples == [("b1", "b2", "b3")]
    assert result.skipped == {
        "b0": "first or last block of its run",
        "b3": "next to another replaced block",
        "head": "not inside a run of ≥ 3 identical blocks",
        "b1": "not selected",
    }


def test_replace_every_first_block_is_an_error():
    for n in (0, 1):
        with pytest.raises(ValueError, match="n ≥ 2"):
            choose([run_of("b0", "b1", "b2")], n)


# --- fuse and Surrogate ------------------------------------------------------------------------


def _fused(mode="tensor", names=("blocks.2",)):
    model = Stack().eval()
    x = torch.randn(4, 6)
    reference = copy.deepcopy(model)
    gm, P, sched, units = _analyse(model, x)
    replacement = choose(identical_runs(model, P, sched, units), list(names))
    surrogates = fuse(gm, model, P, sched, replacement, units, mode)
    return SimpleNamespace(model=model, reference=reference, x=x, gm=gm, surrogates=surrogates)


def _mean_of_neighbours(reference):
    prev, nxt = reference.blocks[1], reference.blocks[3]
    return {n: 0.5 * p + 0.5 * nxt.get_parameter(n) for n, p in prev.named_parameters()}


def test_fuse_rewrites_the_replaced_block_into_one_surrogate_call():
    f = _fused()
    assert f.gm.repl is f.surrogates and list(f.surrogates) == ["blocks__2"]
    calls = [n for n in f.gm.graph.nodes if n.op == "call_module" and n.target.startswith("repl.")]
    assert [n.target for n in calls] == ["repl.blocks__2"]
    assert calls[0].meta["splitfx"] == {"scope": "blocks.2", "cls": "MLPBlock"}
    assert calls[0].args[0].name == "add_1", "the block's input is the previous block's output"
    assert not any(str(n.target).startswith("model.blocks.2.") for n in f.gm.graph.nodes)
    assert [u.name for u in calls[0].users] == ["blocks_3_fc1", "add_3"]


def test_surrogate_starts_as_the_mean_of_its_neighbours():
    f = _fused()
    surrogate = f.surrogates["blocks__2"]
    names = [n for n, _ in f.model.blocks[2].named_parameters()]
    assert sorted(surrogate.a) == sorted(surrogate.b) == sorted(n.replace(".", "__") for n in names)
    assert all(v.shape == () and v.item() == 0.5 for v in [*surrogate.a.values(), *surrogate.b.values()])
    assert {id(p) for p in surrogate.parameters()} == {id(p) for p in [*surrogate.a.values(), *surrogate.b.values()]}
    expected = _mean_of_neighbours(f.reference)
    synthesised = surrogate.synthesised()
    assert synthesised.keys() == expected.keys()
    for n in names:
        assert torch.equal(synthesised[n], expected[n]), n
    assert not any(p.requires_grad for p in f.model.blocks[2].parameters()), "the replaced block owns no weight"
    assert all(p.requires_grad for p in [*f.model.blocks[1].parameters(), *f.model.blocks[3].parameters()])

    with torch.no_grad():
        for n, value in expected.items():
            f.reference.blocks[2].get_parameter(n).copy_(value)
        assert torch.equal(f.gm(f.x), f.reference(f.x))


def test_materialize_writes_the_synthesised_weights():
    f = _fused()
    with torch.no_grad():
        fused_out = f.gm(f.x)
        f.surrogates["blocks__2"].materialize()
        for n, value in _mean_of_neighbours(f.reference).items():
            assert torch.equal(f.model.blocks[2].get_parameter(n), value), n
        assert torch.equal(f.model(f.x), fused_out)


def test_channel_mode_has_one_coefficient_per_output_channel():
    f = _fused(mode="channel")
    surrogate = f.surrogates["blocks__2"]
    assert surrogate.a["fc1__weight"].shape == (8,) and surrogate.b["fc2__bias"].shape == (8,)
    with torch.no_grad():
        surrogate.a["fc1__weight"].copy_(torch.arange(8.0))
        surrogate.b["fc1__weight"].copy_(torch.linspace(-1, 1, 8))
    prev, nxt = f.model.blocks[1].fc1.weight, f.model.blocks[3].fc1.weight
    expected = torch.arange(8.0)[:, None] * prev + torch.linspace(-1, 1, 8)[:, None] * nxt
    assert torch.equal(surrogate.synthesised()["fc1.weight"], expected)


def test_gradient_reaches_coefficients_and_neighbours_not_the_replaced_block():
    f = _fused()
    f.model.train()
    f.gm(f.x).square().sum().backward()
    surrogate = f.surrogates["blocks__2"]
    assert all(p.grad is not None for p in surrogate.parameters())
    assert all(p.grad is not None for p in [*f.model.blocks[1].parameters(), *f.model.blocks[3].parameters()])
    assert all(p.grad is None for p in f.model.blocks[2].parameters())


def test_fused_graph_keeps_its_cuts_and_counts_only_the_coefficients():
    f = _fused()
    G = probe(f.gm, (f.x,)).graph
    sched = schedule(G)
    assert "repl_blocks__2" in sched.order
    assert [c.nodes[0] for c in sched.cuts] == ["stem", "add", "add_1", "repl_blocks__2", "add_3", "add_4"]
    assert node_cost(G, "repl_blocks__2").param_bytes == 2 * 6 * 4, "only the coefficients a and b"


def test_fused_graph_saved_bytes_are_predicted_exactly():
    f = _fused()
    f.model.train()
    P = probe(f.gm, (f.x,))
    with SavedTensorMeter(state_keys([f.gm])) as meter:  # model and surrogate coefficients are state
        f.gm(f.x).sum().backward()
    assert sum(P.graph.graph["storages"].values()) == meter.peak


def test_surrogate_rejects_an_unknown_mode():
    blocks = (MLPBlock(), MLPBlock(), MLPBlock())
    with pytest.raises(ValueError, match="mode"):
        Surrogate(("a", "b", "c"), blocks, "layer")
    assert isinstance(Surrogate(("a", "b", "c"), blocks, "tensor"), nn.Module)


def test_asking_for_repl_where_no_unit_can_be_replaced_says_why():
    with pytest.raises(ArgumentError, match=r"replace=2 replaces no unit.*runs are: none\. Name units"):
        choose([], 2)
    with pytest.raises(ArgumentError, match=r"runs are: b0 … b2 \(3\) \(b0: first or last block of its run; head: not "
                                            r"inside a run of ≥ 3 identical blocks\)"):
        choose([run_of("b0", "b1", "b2")], ["b0", "head"])
