"""What the partition balances and which blocks it may choose: the losses' real peaks (cascades hold
two blocks), at least one whole layer per block, no aux head heavier than its block, and no K at
which a loss holds the whole network."""
import itertools

import numpy as np
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import splitfx
from splitfx.api.planning import split_of
from splitfx.passes.chain_partition import chain_partition
from splitfx.passes.cost import probe
from splitfx.passes.cuts import schedule
from splitfx.passes.trace import trace
from splitfx.passes.units import Unit, find_layers
from splitfx.planner.balance import chain_steps
from splitfx.planner.legality import heads_within_blocks, holds_unit, max_blocks

from checks import assert_eval_equal, assert_isolated


def _path_cost(steps, path):
    out = []
    for k, (i, j) in enumerate(itertools.pairwise(path)):
        c = steps[k].alone[i, j]
        if steps[k].pair is not None:
            c = max(c, steps[k].pair[i, j] + steps[k].previous[path[k - 1], i])
        out.append(c)
    return max(out)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["hpff", "mlaan"]), st.integers(3, 5), st.lists(st.integers(0, 30), min_size=9, max_size=9),
       st.lists(st.integers(0, 9), min_size=9, max_size=9))
def test_the_cascade_objective_is_the_peak_each_loss_holds(recipe, k, sizes, heads):
    """Over every split of a small chain, the partition's objective for a recipe is the largest of
    ``Recipe.step_bytes`` (what the report's estimate uses) and its optimum is the brute-force one."""
    r = splitfx.recipe(recipe)
    m = len(sizes)
    prefix = np.concatenate([[0.0], np.cumsum(sizes[:-1])])
    backbone = np.where(np.triu(np.ones((m, m), bool), 1), prefix[None, :] - prefix[:, None], np.inf)
    with_aux = backbone + np.asarray(heads, dtype=float)[None, :]
    steps = chain_steps(r, k, with_aux, backbone, np.isfinite(with_aux))
    values = {}
    for cuts in itertools.combinations(range(1, m - 1), k - 1):
        path = [0, *cuts, m - 1]
        sub = np.ix_(path, path)
        report = max(r.step_bytes(with_aux[sub], backbone[sub], b) for b in range(k))
        assert _path_cost(steps, path) == report
        values[cuts] = report
    cuts, best = chain_partition(steps, [0] * m)
    assert best == min(values.values()) == values[tuple(cuts)]


def test_independent_recipes_keep_the_one_block_partition():
    a = np.triu(np.ones((5, 5)), 1)
    assert chain_steps(splitfx.recipe("dgl"), 3, a, a, a > 0) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 4)), max_size=5), st.data())
def test_holds_unit_is_a_whole_unit_between_the_boundaries(spans, data):
    units = [Unit(f"u{i}", s, s + n, (), ()) for i, (s, n) in enumerate(spans)]
    bounds = sorted(set(data.draw(st.lists(st.integers(0, 17), min_size=2, max_size=8))))
    got = holds_unit(units, bounds)
    for i, j in itertools.product(range(len(bounds)), repeat=2):
        want = not units or any(bounds[i] <= u.start and u.end <= bounds[j] for u in units)
        assert got[i, j] == want, (i, j)


@pytest.mark.parametrize("recipe", ["man", "linear"])
def test_every_chosen_block_holds_a_whole_residual_block(recipe):
    """resnet18 MAN at K=4 used to be conv1 / bn1 / everything else / fc."""
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(2, 3, 32, 32)
    plan = splitfx.plan(model, x, 4, recipe=recipe)
    units = split_of(plan).graph.repeated()
    assert {type(model.get_submodule(u.name)).__name__ for u in units} == {"BasicBlock"} and len(units) == 8
    for b in plan.blocks:
        assert any(b.start <= u.start and u.end <= b.end for u in units), (b.index, b.modules)
    assert not any("whole layer" in n for n in plan.notes)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.lists(st.integers(1, 30), min_size=7, max_size=7),
       st.lists(st.integers(0, 60), min_size=7, max_size=7))
def test_a_head_heavier_than_its_block_is_refused_where_k_blocks_still_fit(k, sizes, heads):
    """Brute force over every split of a small chain: where some split keeps every head within its
    block, the partition sees exactly those blocks (the last block's "head" is the final loss, never
    refused); where none does, the costs are left as they were and the note names the K that fits."""
    m = len(sizes)
    prefix = np.concatenate([[0.0], np.cumsum(sizes[:-1])])
    backbone = np.where(np.triu(np.ones((m, m), bool), 1), prefix[None, :] - prefix[:, None], np.inf)
    cost = backbone + np.asarray(heads, dtype=float)[None, :]
    masked, note = heads_within_blocks(cost, backbone, [(0, m - 1, k)], "man", "Net")
    fits = lambda i, j: j == m - 1 or heads[j] <= backbone[i, j]  # noqa: E731
    splits = [[0, *c, m - 1] for c in itertools.combinations(range(1, m - 1), k - 1)]
    feasible = [p for p in splits if all(fits(i, j) for i, j in itertools.pairwise(p))]
    if feasible:
        assert note is None
        for i, j in itertools.combinations(range(m), 2):
            assert np.isfinite(masked[i, j]) == fits(i, j), (i, j)
    else:
        most = max_blocks(np.isfinite(cost) & np.array([[fits(i, j) for j in range(m)] for i in range(m)]))
        assert (masked == cost).all() and f"with at most {most} blocks every head stays within its block" in note
        assert most < k


def test_resnet18_man_heads_stay_within_their_blocks_or_the_plan_says_which_k_does():
    """resnet18 at 32² with MAN: the heads (a copy of the next residual block, InfoPro's classifier
    and decoder) outweigh any block at K=4; the plan says so and names K=3, where none does."""
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(2, 3, 32, 32)
    four = splitfx.plan(model, x, 4, recipe="man")
    assert any("with at most 3 blocks every head stays within its block" in n for n in four.notes), four.notes
    three = splitfx.plan(model, x, 3, recipe="man")
    assert not three.notes
    assert all(b.aux_saved_bytes <= b.own_saved_bytes for b in three.blocks), [
        (b.aux_saved_bytes, b.own_saved_bytes) for b in three.blocks]
    assert all(b.aux_saved_bytes > 0 for b in three.blocks[:-1]) and three.blocks[-1].aux_saved_bytes == 0


def test_layers_between_multi_tensor_cuts_count_as_whole_layers():
    """HRNet in miniature: past its first stage every cut hands over both resolutions, so only the
    four residual blocks of ``layer1`` start and end at one-tensor cuts. With only those as layers
    K=4 cut inside ``layer1`` and left 209,052 of 264,348 saved bytes (0.79× E2E) to the last block;
    the branches' residual blocks, between two-tensor cuts, are whole layers too, while the units
    that recipes copy stay one-tensor."""
    from tinynets import TwoResolutions

    torch.manual_seed(0)
    model, x, y = TwoResolutions(), torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    G = probe(trace(model, (x,)), (x,)).graph
    layers = find_layers(model, G, schedule(G, 16))
    branches = [f"stages.{s}.branches.{b}.{k}" for s in range(3) for b in range(2) for k in range(2)]
    assert [u.name for u in layers] == [*(f"layer1.{i}" for i in range(4)), *branches]
    plan = splitfx.plan(model, x, 4)
    assert [u.name for u in split_of(plan).graph.units] == [f"layer1.{i}" for i in range(4)]
    assert plan.local_peak_bytes < 0.3 * plan.e2e_saved_bytes, plan.table()  # 71,772 bytes: 0.27×
    assert [b.modules[0].startswith("stages.") for b in plan.blocks] == [False, False, True, True], plan.table()
    for b in plan.blocks:
        assert any(b.start <= u.start and u.end <= b.end for u in layers), (b.index, b.modules)
    assert not plan.notes
    sm = splitfx.convert(model, x, plan=plan)
    assert_isolated(sm, x, y)
    assert_eval_equal(sm, model, x)


def test_more_blocks_than_layers_fall_back_and_say_so():
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(2, 3, 32, 32)
    plan = splitfx.plan(model, x, 9)
    assert plan.num_blocks == 9 and "room for 8 blocks" in plan.notes[0] and "note: ResNet has room" in plan.table()
    forced = splitfx.plan(model, x, split_points=["conv1", "layer1.0.conv1"])
    assert forced.blocks[0].modules == ["conv1"] and not forced.notes, "split points cut anywhere"


@pytest.mark.parametrize("recipe", ["hpff", "mlaan"])
def test_a_cascade_whose_loss_holds_every_block_is_refused(recipe):
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(2, 3, 32, 32)
    with pytest.raises(splitfx.PlanError, match=r"loss 0 runs blocks 0 to 1 together.*at least 3 blocks"):
        splitfx.plan(model, x, 2, recipe=recipe)
    assert splitfx.plan(model, x, 3, recipe=recipe).num_blocks == 3


def test_cuts_fixed_in_advance_are_kept_even_behind_a_head_heavier_than_its_block():
    """``train --cuts`` and resuming pin every cut (as fixed stage boundaries): a head heavier than its
    pinned block is noted, never a refusal of cuts that a split_points plan made."""
    from splitfx.api.staging import cut_positions, plan_at

    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(2, 3, 32, 32)
    pinned = splitfx.plan(model, x, split_points=["layer1.0", "layer3.0"], recipe="man")
    assert any(b.aux_saved_bytes > b.own_saved_bytes for b in pinned.blocks)
    again = plan_at(model, (x,), 3, {"recipe": "man"}, cut_positions(pinned))
    assert [b.modules for b in again.blocks] == [b.modules for b in pinned.blocks]
    assert any("between the cuts placed first" in n for n in again.notes), again.notes
