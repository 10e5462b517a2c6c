"""Tracing: mode-independent graphs, scopes, concrete args, batch-size ints, clear errors."""
import pytest
import timm
import torch
from torch import nn

import splitfx
from splitfx.passes import shape_branch
from splitfx.passes.trace import trace

from checks import assert_eval_equal

DROPPY = [
    ("vit_tiny_patch16_224", 224, dict(drop_path_rate=0.2, attn_drop_rate=0.1, proj_drop_rate=0.1)),
    ("convnext_atto", 64, dict(drop_path_rate=0.2)),
    ("resnet18", 64, dict(drop_path_rate=0.2, drop_rate=0.2)),
    ("levit_128s", 224, dict(drop_path_rate=0.2)),
]


@pytest.mark.parametrize("name,size,kwargs", DROPPY, ids=[d[0] for d in DROPPY])
def test_train_traced_graph_matches_eager_in_both_modes(name, size, kwargs):
    model = timm.create_model(name, num_classes=10, **kwargs).train()
    x = torch.randn(2, 3, size, size)
    gm = trace(model, (x,))
    assert model.training and all(m.training for m in model.modules()), "trace must restore modes"
    model.eval()
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        eager = model(x)
        torch.manual_seed(1)
        traced = gm(x)
    assert torch.equal(traced, eager)


def test_scopes_are_recorded():
    model = timm.create_model("resnet18")
    gm = trace(model, (torch.randn(1, 3, 32, 32),))
    scopes = {n.name: n.meta["splitfx"] for n in gm.graph.nodes}
    assert scopes["layer1_0_conv1"] == {"scope": "layer1.0.conv1", "cls": "Conv2d"}
    assert scopes["add"] == {"scope": "layer1.0", "cls": "BasicBlock"}


def test_optional_forward_args_are_concrete():
    """ViT's attn_mask=None must not stay live through the graph: every block boundary is a cut."""
    model = timm.create_model("vit_tiny_patch16_224", depth=4)
    plan = splitfx.plan(model, torch.randn(1, 3, 224, 224), num_blocks=5)
    assert plan.num_blocks == 5
    assert plan.legal_cuts >= 4


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = DataDependent()
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.body(self.gate(self.stem(x))).mean((2, 3)))


def test_untraceable_module_is_named_with_the_escape_hatch():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(splitfx.TraceError) as info:
        splitfx.plan(Net(), x, num_blocks=2, auto_leaf=False)
    message = str(info.value)
    assert "'gate'" in message and "DataDependent" in message and "leaf_modules=['gate']" in message
    sm = splitfx.convert(Net(), x, num_blocks=2, leaf_modules=["gate"])
    assert sm.num_blocks == 2
    sm2 = splitfx.convert(Net(), x, num_blocks=2, leaf_modules=[DataDependent])
    assert any(n.op == "call_module" and n.target == "model.gate" for n in sm2.traced.graph.nodes)


def test_an_untraceable_submodule_becomes_a_leaf_and_the_model_still_splits():
    from checks import assert_eval_equal, assert_isolated

    model, x = Net(), torch.randn(2, 3, 8, 8)
    plan = splitfx.plan(model, x, num_blocks=3, num_classes=4)
    assert list(plan.auto_leaves) == ["gate"] and "TraceError" in plan.auto_leaves["gate"]
    assert "kept whole (fx cannot trace inside it): gate" in plan.table()
    sm = splitfx.convert(model, x, num_blocks=3, num_classes=4)
    assert any(n.op == "call_module" and n.target == "model.gate" for n in sm.traced.graph.nodes)
    assert_eval_equal(sm, model, x)
    assert_isolated(sm, x, torch.randint(0, 4, (2,)))


def test_a_step_fake_tensors_cannot_run_keeps_the_estimate_and_the_plan_says_why():
    x = torch.randn(2, 3, 8, 8)
    plan = splitfx.plan(Net(), x, num_blocks=3, num_classes=4)  # the gate's `if x.sum() > 0` needs real data
    assert plan.simulation_error.startswith("DataDependentOutputException")
    assert plan.to_dict()["simulation_error"] == plan.simulation_error
    assert "saved activations estimated per op: fake tensors could not run a local step" in plan.table()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    assert splitfx.plan(mlp, x, num_blocks=2).simulation_error is None


def test_unknown_leaf_name_is_an_error():
    with pytest.raises(splitfx.TraceError, match="nope"):
        splitfx.plan(Net(), torch.randn(1, 3, 8, 8), leaf_modules=["nope"])


class TrainHead(nn.Module):
    """Training scores one way and evaluation another, in the model's own forward; and training
    alone scales-and-shifts the features first (two chained calls eval skips)."""

    def __init__(self, branch: bool):
        super().__init__()
        self.body, self.head, self.other = nn.Linear(6, 6), nn.Linear(6, 3), nn.Linear(6, 3)
        self.branch = branch

    def forward(self, x):
        x = self.body(x)
        if self.training:
            x = torch.add(torch.mul(x, 2.0), 1.0)
        if self.branch and not self.training:
            return self.other(x)
        return self.head(x)


def test_train_only_calls_in_the_models_own_forward_are_gated_and_any_other_branch_is_refused():
    model, x = TrainHead(branch=False), torch.randn(2, 6)
    gm = trace(model, (x,))
    gated = [n.target.train_only_of for n in gm.graph.nodes if hasattr(n.target, "train_only_of")]
    assert gated == [torch.mul, torch.add]
    for mode in (True, False):
        model.train(mode)
        assert torch.equal(gm(x), model(x)), f"training={mode}"
    with pytest.raises(splitfx.TraceError, match=r"forward of TrainHead itself branches on self\.training"):
        trace(TrainHead(branch=True), (x,))


class Reshaper(nn.Module):
    """Computes the batch size once at the top and uses it at the very end (as CoaT does)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 6)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        batch = x.shape[0]
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        x = torch.relu(self.c(x))
        return self.head(x.reshape(batch, -1))


def test_batch_size_ints_are_recomputed_across_cuts():
    model = Reshaper()
    sm = splitfx.convert(model, torch.randn(2, 4, 6), num_blocks=3)
    assert any("size" in b.code for b in sm.blocks[1:])
    x = torch.randn(5, 4, 6)  # another batch size than the one traced with
    staged = x
    for block in sm.blocks:
        staged = block(*staged) if isinstance(staged, tuple) else block(staged)
    assert torch.equal(staged, model(x))


def test_control_flow_on_shapes_takes_the_examples_branch_and_refuses_another():
    """gemma4_vit: ``if x.ndim != 4``, a width check, a branch on an intermediate length and
    ``torch.ones(B, L)``. The graph follows the example's branches and checks them at run time."""
    from tinynets import ShapeChecks

    model, x = ShapeChecks(), torch.randn(2, 3, 4, 6)
    norm = {k: v.clone() for k, v in model.norm.state_dict().items()}
    gm = trace(model, (x,))
    assert all(torch.equal(v, model.norm.state_dict()[k]) for k, v in norm.items()), "tracing ran nothing for real"
    checks = [n for n in gm.graph.nodes if n.target is shape_branch.expect_branch]
    assert [n.args[1] for n in checks] == [False, False, True]
    for mode in (True, False):
        model.train(mode)
        torch.manual_seed(0)
        want = model(x)
        torch.manual_seed(0)
        assert torch.equal(gm(x), want), f"training={mode}"
    sm = splitfx.convert(model, x, 3, num_classes=4)
    assert_eval_equal(sm, model, x)
    with pytest.raises(splitfx.SplitFXError, match=r"x\.shape\[-1\] % 2 != 0.*convert the model again"):
        sm(torch.randn(2, 3, 4, 5))


class OnData(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class OnBatch(nn.Module):
    def forward(self, x):
        return x * 2 if x.shape[0] > 2 else x


@pytest.mark.parametrize("model,why", [(OnData(), "more than the inputs' shapes"), (OnBatch(), "the batch size")])
def test_control_flow_on_data_or_on_the_batch_size_is_still_refused(model, why):
    with pytest.raises(splitfx.TraceError, match=why):
        trace(model, (torch.randn(2, 3),))
