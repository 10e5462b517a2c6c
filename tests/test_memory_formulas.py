"""The bytes formulas (base/memory.py), the optimizer table (base/optimizers.py), the shared tensor
walks (base/tensors.py) and the one min-max split (passes/partition.py) that the planner's stages use."""
import itertools

import numpy as np
import pytest
import torch
import torch.fx as fx
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import splitfx
from splitfx.base.memory import optimizer_state_bytes, training_state_bytes, weight_bytes
from splitfx.base.optimizers import OPTIMIZERS, optimizer_spec
from splitfx.base.tensors import node_parameters, node_tensors, state_slots
from splitfx.passes.partition import min_max_split

from tinynets import Stack

F32 = 4


class Tied(nn.Module):
    """One Linear called twice, a second Parameter on the same storage, a buffer, a get_attr."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.alias = nn.Parameter(self.fc.weight.detach())  # same storage, another Parameter
        self.scale = nn.Parameter(torch.ones(4))
        self.register_buffer("shift", torch.zeros(4))

    def forward(self, x):
        return self.fc(self.fc(x)) * self.scale + self.shift


def test_weight_bytes_counts_shared_storage_once_and_meta_not_at_all():
    m = Tied()
    assert weight_bytes(m) == (16 + 4 + 4 + 4) * F32, "alias of fc.weight counted once; buffer counted"
    assert weight_bytes([m.fc.weight, m.fc.weight, m.fc.weight.detach(), m.alias]) == 16 * F32
    assert weight_bytes([m.fc.weight[:2], m.fc.weight[2:]]) == 16 * F32, "two halves of one storage"
    assert weight_bytes([torch.empty(1000, device="meta")]) == 0
    seen: set = set()
    assert weight_bytes([m.fc.weight], seen) == 16 * F32
    assert weight_bytes([m.alias, m.scale], seen) == 4 * F32, "a stretch already seen is skipped"


def test_optimizer_state_bytes_is_what_the_state_holds():
    m = nn.Linear(8, 8)
    opt = torch.optim.AdamW(m.parameters())
    assert optimizer_state_bytes(opt) == 0
    m(torch.randn(2, 8)).sum().backward()
    opt.step()
    tensors = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert optimizer_state_bytes(opt) == sum(t.numel() * t.element_size() for t in tensors)
    assert optimizer_state_bytes(opt) >= 2 * weight_bytes(m)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_keeps_the_state_tensors_its_entry_counts(name):
    m = nn.Linear(8, 8)
    opt = OPTIMIZERS[name](m.parameters())  # the entry makes it, as measure_block_times does
    m(torch.randn(2, 8)).sum().backward()
    opt.step()
    shaped = [t for t in opt.state[m.weight].values() if isinstance(t, torch.Tensor) and t.shape == m.weight.shape]
    assert len(shaped) == OPTIMIZERS[name].states


def test_training_state_bytes_and_the_plan_agree():
    assert training_state_bytes(100, 60, "sgd") == 100 + 60
    assert training_state_bytes(100, 60, "adamw") == 100 + 3 * 60
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        optimizer_spec("lion")
    plan = splitfx.plan(Stack(), torch.randn(4, 6), 2)
    assert plan.optimizer == "adamw" and plan.training_peak_bytes() == plan.step_peak_bytes > 0
    for name in set(OPTIMIZERS) - {"adamw"}:  # another optimizer than the simulated one: the formula
        assert plan.training_peak_bytes(name) == plan.local_peak_bytes + training_state_bytes(
            plan.param_bytes, plan.trainable_bytes, name)


def test_plan_counts_repl_coefficients_among_its_parameter_bytes():
    """param_bytes is every parameter, the RepL fusion coefficients included: what is not trained is
    exactly the replaced block's frozen weights."""
    model = Stack()
    frozen = weight_bytes(list(model.blocks[2].parameters()))
    plan = splitfx.plan(model, torch.randn(4, 6), 2, replace=["blocks.2"])
    assert plan.replaced == ["blocks.2"]
    assert plan.param_bytes - plan.trainable_bytes == frozen


def test_node_walk_and_state_slots():
    m = Tied()
    gm = fx.symbolic_trace(m)
    by_op = {}
    for node in gm.graph.nodes:
        by_op.setdefault(node.op, []).append(node)
    fc = by_op["call_module"][0]
    assert [id(t) for t in node_tensors(gm, fc)] == [id(m.fc.weight), id(m.fc.bias)]
    attrs = {n.target: n for n in by_op["get_attr"]}
    assert node_tensors(gm, attrs["shift"])[0] is m.shift
    assert node_parameters(gm, attrs["shift"]) == [], "a buffer trains nothing"
    assert node_parameters(gm, attrs["scale"]) == [m.scale]
    assert node_tensors(gm, by_op["placeholder"][0]) == []
    shared = nn.Sequential(m.fc, m.fc)  # one module reached by two paths
    assert [name for _, name, _ in state_slots(shared)] == ["weight", "bias"]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_min_max_split_is_the_brute_force_optimum(data):
    n = data.draw(st.integers(2, 7))
    k = data.draw(st.integers(1, n))
    weights = data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    prefix = np.concatenate([[0], np.cumsum(weights)]).astype(float)
    cost = np.where(np.triu(np.ones((n + 1, n + 1), dtype=bool), 1), prefix[None, :] - prefix[:, None], np.inf)
    banned = data.draw(st.sets(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=4))
    for a, b in banned:
        cost[a, b] = np.inf
    splits = [[0, *c, n] for c in itertools.combinations(range(1, n), k - 1)]
    best = min(max(cost[a, b] for a, b in itertools.pairwise(s)) for s in splits)
    got = min_max_split(cost, k)
    if not np.isfinite(best):
        assert got is None
    else:
        assert got[0] == 0 and got[-1] == n and len(got) == k + 1
        assert max(cost[a, b] for a, b in itertools.pairwise(got)) == best
