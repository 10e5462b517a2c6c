"""Cuts through several live tensors: tiny graphs, the partition objective, budgets, real models at K=8."""
import itertools

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import splitfx
from splitfx.base.live_bytes import LiveBytes
from splitfx.base.meter import SavedTensorMeter, state_keys
from splitfx.base.workspace import onednn_scratch
from splitfx.passes.partition import additive_cost, min_max_partition

from checks import assert_eval_equal, assert_interleaved_equals_summed, assert_isolated


class TwoBranch(nn.Module):
    """Two branches that meet only at the end (HRNet, CrossViT in miniature)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a = torch.relu(self.a2(torch.relu(self.a1(x))))
        b = torch.relu(self.b2(torch.relu(self.b1(x))))
        return self.fc(torch.cat([a.mean((2, 3)), b.mean((2, 3))], 1))


class Dense(nn.Module):
    """A dense block: every layer reads the concatenation of all before it."""

    def __init__(self, layers: int = 4, growth: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList(nn.Conv2d(8 + i * growth, growth, 3, padding=1) for i in range(layers))
        self.fc = nn.Linear(8 + layers * growth, 3)

    def forward(self, x):
        features = [torch.relu(self.stem(x))]
        for layer in self.layers:
            features.append(torch.relu(layer(torch.cat(features, 1))))
        return self.fc(torch.cat(features, 1).mean((2, 3)))


class Residual(nn.Module):
    """Residual blocks whose insides are only reachable with the skip tensor handed over too."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(4))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        x = torch.relu(x + self.c4(torch.relu(self.c3(x))))
        return self.fc(x.mean((2, 3)))


class ThroughIdentity(nn.Module):
    """The handed-over tensor reaches an in-place ReLU through an Identity (a DropBlock at p=0)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.drop, self.act = nn.Identity(), nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.act(self.drop(self.conv1(x)))
        return self.fc(self.conv2(x).mean((2, 3)))


def test_an_input_written_in_place_through_an_alias_is_cloned_first():
    model, x = ThroughIdentity(), torch.randn(2, 3, 8, 8)
    sm = _check(model, x, 2, recipe="dgl", split_points=["conv1"])  # DGL's pooling saves conv1's output
    assert "clone" in sm.blocks[1].code


def _check(model, x, num_blocks, **kwargs):
    y = torch.randint(0, 3, (x.shape[0],))
    sm = splitfx.convert(model, x, num_blocks, **kwargs)
    assert sm.num_blocks == num_blocks
    assert_eval_equal(sm, model, x)
    if not sm.recipe.traits.cascade:  # a cascade trains a block from two losses: float sums in another order
        assert_interleaved_equals_summed(sm, x, y)
    assert_isolated(sm, x, y)
    return sm


@pytest.mark.parametrize("recipe", ["linear", "dgl", "infopro", "hpff"])
def test_two_branches_are_handed_over_together_and_both_train(recipe):
    model, x = TwoBranch(), torch.randn(2, 3, 8, 8)
    sm = _check(model, x, 3, recipe=recipe, split_points=["a1", "b1"])
    assert [len(b.output_shapes) for b in sm.plan.blocks[:-1]] == [2, 2]
    assert sm.blocks[1].code.count("detach()") == 2
    reached = assert_isolated(sm, torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2,)))
    assert {"model.a2.weight", "model.b1.weight"} <= reached[1], "both branches of block 1 learn from its loss"


def test_a_dense_block_splits_inside_with_every_feature_handed_over():
    model, x = Dense(), torch.randn(2, 3, 8, 8)
    plan = splitfx.plan(model, x, 3, split_points=["layers.1", "layers.2"])
    assert [len(b.output_shapes) for b in plan.blocks[:-1]] == [3, 4]
    _check(model, x, 3, split_points=["layers.1", "layers.2"])
    with pytest.raises(splitfx.PlanError):
        splitfx.plan(model, x, 3, split_points=["layers.1"], max_cut_tensors=2)


def test_a_residual_block_is_entered_half_way():
    model, x = Residual(), torch.randn(2, 3, 8, 8)
    sm = _check(model, x, 3, split_points=["c1", "c3"])
    assert [len(b.output_shapes) for b in sm.plan.blocks[:-1]] == [2, 2]


# ffr predicts one value per sample, not classes (its memory: tests/test_ffr.py).
@pytest.mark.parametrize("recipe", sorted(set(splitfx.list_recipes()) - {"e2e", "ffr"}))
def test_multi_tensor_plans_predict_exactly_what_the_meter_measures(recipe):
    torch.manual_seed(0)
    model, x = Dense(), torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 3, (4,))
    sm = splitfx.convert(model, x, 4, recipe=recipe).train()
    assert any(len(b.output_shapes or ()) > 1 for b in sm.plan.blocks)
    measured = []
    with SavedTensorMeter(state_keys([sm])) as meter:
        for loss in sm.local_losses(x, y):
            measured.append(meter.peak)
            loss.backward()
            meter.mark()
    assert measured == [b.saved_bytes for b in sm.plan.blocks]


def test_residual_nets_still_cut_between_stages_when_that_is_as_good():
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(2, 3, 64, 64)
    loose = splitfx.plan(model, x, 4, tolerance=0.05)
    strict = splitfx.plan(model, x, 4, tolerance=0.0, max_cut_tensors=None)
    count = [sum(len(b.output_shapes) > 1 for b in p.blocks[:-1]) for p in (loose, strict)]
    assert count[0] <= count[1]
    assert loose.local_peak_bytes <= 1.05 * strict.local_peak_bytes


def _objective(cost, cuts, tensors, weights):
    path = [0, *cuts, cost.shape[0] - 1]
    blocks = [cost[i, j] for i, j in itertools.pairwise(path)]
    multi = sum(tensors[c] > 1 for c in cuts)
    return multi, sum(tensors[c] for c in cuts), max(blocks), -min(blocks), sum(weights[c] for c in cuts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=2, max_size=9), st.data())
def test_partition_with_handover_counts_matches_brute_force(node_costs, data):
    n = len(node_costs)
    bounds = list(range(n + 1))
    cost = additive_cost(node_costs, bounds)
    tensors = [1, *data.draw(st.lists(st.integers(1, 3), min_size=n - 1, max_size=n - 1)), 1]
    weights = data.draw(st.lists(st.integers(0, 9), min_size=n + 1, max_size=n + 1))
    k = data.draw(st.integers(1, n))
    tol = data.draw(st.sampled_from([0.0, 0.1, 0.5]))
    cuts = min_max_partition(cost, k, weights, tensors, tol)
    plans = [list(c) for c in itertools.combinations(range(1, n), k - 1)]
    best_max = min(max(cost[i, j] for i, j in itertools.pairwise([0, *p, n])) for p in plans)
    allowed = [p for p in plans if max(cost[i, j] for i, j in itertools.pairwise([0, *p, n])) <= best_max * (1 + tol)]
    assert _objective(cost, cuts, tensors, weights) == min(_objective(cost, p, tensors, weights) for p in allowed)


def test_budget_chooses_the_fewest_blocks_that_fit():
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(8, 3, 64, 64)
    peaks = {k: splitfx.plan(model, x, k).training_peak_bytes() for k in range(1, 9)}
    budget = (peaks[2] + peaks[3]) // 2 if peaks[3] < peaks[2] else peaks[3]
    chosen = splitfx.plan(model, x, memory_budget=budget)
    assert chosen.training_peak_bytes() <= budget
    assert chosen.num_blocks == min(k for k, peak in peaks.items() if peak <= budget)
    with pytest.raises(splitfx.PlanError, match="smallest predicted training peak"):
        splitfx.plan(model, x, memory_budget=min(peaks.values()) - 1)


def test_max_batch_plans_on_expanded_batches_and_allocates_none(monkeypatch):
    from splitfx.api import planning

    seen, real = [], planning._planner

    def recording(model, inputs, *args, **kwargs):
        seen.append((inputs[0].shape[0], inputs[0].stride(0), inputs[0].untyped_storage().nbytes()))
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(planning, "_planner", recording)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x = torch.randn(2, 3, 32, 32)
    plan = splitfx.max_batch(model, x, 3, memory_budget="1TiB")  # millions of images: a real batch would not fit
    assert plan.input_shapes[0][0] > 10**6
    expanded = [(stride, nbytes) for batch, stride, nbytes in seen if batch != 2]
    assert expanded and all(stride == 0 and nbytes == x.nbytes for stride, nbytes in expanded)


def test_max_batch_fits_and_one_more_does_not_and_the_meter_agrees():
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(4, 3, 32, 32)
    budget = splitfx.plan(model, torch.randn(37, 3, 32, 32), 3, optimizer="sgd").training_peak_bytes() + 1
    plan = splitfx.max_batch(model, x, 3, memory_budget=budget, optimizer="sgd")
    batch = plan.input_shapes[0][0]
    assert plan.training_peak_bytes() <= budget and plan.training_peak_bytes() == plan.step_peak_bytes
    assert splitfx.plan(model, torch.randn(batch + 1, 3, 32, 32), 3, optimizer="sgd").training_peak_bytes() > budget
    # What the prediction counts, measured on the real step by the same tracker: every tensor alive
    # (weights, gradients, activations, transients), the batch and oneDNN's modelled scratch; saved
    # activations by the meter.
    xb, yb = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    sm = splitfx.convert(model, xb, plan=splitfx.plan(model, xb, 3, optimizer="sgd"))
    opt = torch.optim.SGD(sm.parameters(), lr=0.01)
    sm.train_step(xb, yb, opt)
    with LiveBytes(sm, opt, xb, yb, workspace=onednn_scratch) as live:
        sm.train_step(xb, yb, opt)
    with SavedTensorMeter(state_keys([sm])) as meter:  # apart: its packed aliases would count the batch
        sm.train_step(xb, yb, opt)
    assert live.peak == plan.training_peak_bytes()
    assert meter.peak == plan.local_peak_bytes


@pytest.mark.parametrize("name,size", [("resnet50", 64), ("densenet121", 64), ("hrnet_w18_small", 64),
                                       ("swin_tiny_patch4_window7_224", 224)])
def test_reference_models_at_k8_keep_parity_and_isolation(name, size):
    model = timm.create_model(name, num_classes=10)
    _check(model, torch.randn(2, 3, size, size), 8)


@pytest.mark.parametrize("recipe", ["linear", "dgl"])
def test_an_integer_tensor_crosses_every_cut_unread_by_the_heads(recipe):
    """gemma4_vit's patch positions: made at the start, read at the end. Cuts hand them over with
    the features; the heads read only the features (an integer has no gradient to give)."""
    from tinynets import Positions

    model, x, y = Positions(), torch.randn(2, 16, 4), torch.tensor([0, 2])
    sm = splitfx.convert(model, x, 3, recipe=recipe, num_classes=3)
    handed = [b.output_shapes for b in sm.plan.blocks[:-1]]
    assert [2, 16] in handed[0] and len(handed[0]) == 2, handed
    assert_isolated(sm, x, y)
    assert all(torch.isfinite(torch.tensor(sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1)))))
    assert_eval_equal(sm, model, x)


def test_token_sequences_beside_an_unread_integer_tensor_still_join_per_token():
    from splitfx.recipes.layout import Layout
    from splitfx.recipes.merge import merge_for

    merge, shape, layout = merge_for([((2, 16, 4), "NLC"), ((2, 16), Layout.UNREAD), ((2, 16, 8), "NLC")], "map")
    assert (shape, layout) == ((2, 16, 12), "NLC")
    tokens, positions, more = torch.randn(2, 16, 4), torch.arange(16).expand(2, 16), torch.randn(2, 16, 8)
    assert torch.equal(merge(tokens, positions, more), torch.cat([tokens, more], dim=2))


def test_a_batch_folded_stream_crosses_cuts_unread_beside_the_batch():
    """TNT in miniature: each block hands on its pixel tokens (the batch folded 16×) with its patch
    tokens. When a cut had to hand over one fold throughout, 10 of 80 places were cuts, all past the
    last block's pixel tokens, and K=4 kept 0.96× E2E in one block; now the heads read the patch tokens
    and the pixel tokens go along unread."""
    from splitfx.api.planning import split_of
    from splitfx.recipes.layout import Layout

    from tinynets import PixelTokens

    torch.manual_seed(0)
    model, x, y = PixelTokens(), torch.randn(2, 3, 16, 16), torch.tensor([0, 4])
    plan = splitfx.plan(model, x, 4)
    assert plan.legal_cuts > 10 and plan.local_peak_bytes < 0.32 * plan.e2e_saved_bytes, plan.table()  # 0.30×
    assert [b.modules[0] for b in plan.blocks[1:]] == [f"blocks.{k}.inner.0" for k in (1, 2, 3)]
    for b in split_of(plan).boundaries:
        assert b.parts == (((32, 16, 8), Layout.UNREAD), ((2, 16, 16), Layout.NLC)) and b.shape == (2, 16, 16)
    sm = splitfx.convert(model, x, plan=plan)
    assert_isolated(sm, x, y)
    assert_eval_equal(sm, model, x)
