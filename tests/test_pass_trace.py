"""Unit tests of the trace pass (and bind/names) on tiny hand-built modules."""
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from splitfx.base.errors import SplitFXError, TraceError
from splitfx.passes.bind import attach, bind
from splitfx.passes.names import PREFIX, inside, unprefix
from splitfx.passes.trace import trace, training_mode

from tinynets import Branchy, Shared, Tokens


def _both_modes_equal(model: nn.Module, gm: fx.GraphModule, x: torch.Tensor) -> None:
    for mode in (False, True):
        model.train(mode)
        with torch.no_grad():
            torch.manual_seed(1)
            eager = model(x)
            torch.manual_seed(1)
            traced = gm(x)
        assert torch.equal(traced, eager), f"training={mode}"


# --- names -------------------------------------------------------------------------------------


def test_prefix_and_unprefix():
    assert PREFIX == "model."
    assert unprefix("model.layers.0.conv1") == "layers.0.conv1"
    assert unprefix("layers.0") == "layers.0"
    assert unprefix("modelx.a") == "modelx.a"


@pytest.mark.parametrize("scope,module,expected", [
    ("layers.0.conv1", "layers.0", True),
    ("layers.0", "layers.0", True),
    ("layers.0", "", True),
    ("", "", True),
    ("layers.10", "layers.1", False),
    ("layers", "layers.0", False),
    ("", "layers", False),
])
def test_inside(scope, module, expected):
    assert inside(scope, module) is expected


# --- bind --------------------------------------------------------------------------------------


def test_bind_prefixes_targets_and_looks_state_up_live():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    graph = fx.symbolic_trace(model).graph
    gm = bind(model, graph, "Bound")
    assert type(gm).__name__ == "Bound"
    assert gm.model is model
    targets = [n.target for n in gm.graph.nodes if n.op in ("call_module", "get_attr")]
    assert targets == ["model.0", "model.1", "model.2"]
    x = torch.randn(3, 4)
    assert torch.equal(gm(x), model(x))
    before = gm(x)
    model[2].weight = nn.Parameter(torch.randn(2, 4))  # replaced, not updated in place
    assert not torch.equal(gm(x), before)
    assert torch.equal(gm(x), model(x))
    model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()}, assign=True)
    assert torch.equal(gm(x), model(x))
    assert {id(p) for p in gm.parameters()} == {id(p) for p in model.parameters()}


def test_attach_reaches_extra_modules_by_their_prefix():
    model = nn.Linear(3, 3)
    extra = nn.Linear(3, 3)
    graph = fx.Graph()
    x = graph.placeholder("x")
    h = graph.call_module("model", (x,))
    graph.output(graph.call_module("repl.f", (h,)))
    gm = attach(model, graph, "WithExtras", {"repl": nn.ModuleDict({"f": extra})})
    assert gm.model is model and gm.repl["f"] is extra
    inp = torch.randn(2, 3)
    assert torch.equal(gm(inp), extra(model(inp)))


# --- trace -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,shape", [(Branchy, (2, 3, 6, 6)), (Shared, (4, 6)), (Tokens, (2, 3, 6))],
                         ids=["branchy", "shared", "tokens"])
def test_traced_graph_equals_eager_in_eval_and_train(make, shape):
    model = make()
    x = torch.randn(shape)
    gm = trace(model, (x,))
    assert gm.model is model
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr"):
            assert n.target.startswith(PREFIX), n.target
    _both_modes_equal(model, gm, x)


def test_every_node_gets_its_scope_and_class():
    model = Branchy(depth=2)
    gm = trace(model, (torch.randn(1, 3, 6, 6),))
    meta = {n.name: n.meta["splitfx"] for n in gm.graph.nodes}
    assert set(meta) == {n.name for n in gm.graph.nodes}
    assert meta["stem"] == {"scope": "stem", "cls": "Conv2d"}
    assert meta["layers_0_conv1"] == {"scope": "layers.0.conv1", "cls": "Conv2d"}
    assert meta["add"] == {"scope": "layers.0", "cls": "Residual"}
    assert meta["add_1"] == {"scope": "layers.1", "cls": "Residual"}
    # the shared in-place ReLU is called twice inside each block: two nodes, one scope
    assert meta["layers_1_relu"] == meta["layers_1_relu_1"] == {"scope": "layers.1.relu", "cls": "ReLU"}
    assert meta["cat"] == {"scope": "", "cls": "Branchy"}
    assert meta["scale"] == {"scope": "", "cls": "Branchy"}
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert calls.count("model.layers.0.relu") == 2
    assert [n.target for n in gm.graph.nodes if n.op == "get_attr"] == ["model.scale"]


def test_trace_restores_every_modules_own_mode():
    model = Branchy(depth=2).train()
    model.layers[1].eval()
    before = {name: m.training for name, m in model.named_modules()}
    trace(model, (torch.randn(1, 3, 6, 6),))
    assert {name: m.training for name, m in model.named_modules()} == before
    with training_mode(model, False):
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before


class ModeBranch(nn.Module):
    def forward(self, x):
        if self.training:
            return x * 2
        return x + 1


class WithModeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.branch = ModeBranch()
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.drop(self.branch(torch.relu(self.a(x)))))


def test_module_branching_on_training_becomes_a_leaf():
    model = WithModeBranch().eval()  # traced in eval mode first: the graph must still serve train mode
    x = torch.randn(4, 6)
    gm = trace(model, (x,))
    assert not model.training
    calls = {n.target: n.meta["splitfx"] for n in gm.graph.nodes if n.op == "call_module"}
    assert calls["model.branch"] == {"scope": "branch", "cls": "ModeBranch"}
    assert "model.drop" in calls, "Dropout is always kept as a leaf"
    # ModeBranch's own code (x * 2 / x + 1) stays inside the leaf
    assert not any(n.op == "call_function" and n.target in (operator.mul, operator.add) for n in gm.graph.nodes)
    _both_modes_equal(model, gm, x)


class FunctionalDropout(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, training=self.training)


class WithFunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.fd = FunctionalDropout()
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.fd(self.a(x)))


def test_training_flag_constant_is_read_at_run_time_not_made_a_leaf():
    """F.dropout(training=self.training) differs between modes only by a True/False constant:
    the node is patched to read ``fd.training`` instead of becoming an opaque leaf."""
    model = WithFunctionalDropout()
    x = torch.randn(8, 6)
    gm = trace(model, (x,))
    assert "model.fd" not in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    (drop,) = [n for n in gm.graph.nodes if n.target is F.dropout]
    flag = drop.kwargs["training"]
    assert isinstance(flag, fx.Node) and flag.op == "get_attr" and flag.target == "model.fd.training"
    assert drop.meta["splitfx"]["scope"] == "fd"
    _both_modes_equal(model, gm, x)
    model.train()
    model.fd.eval()  # per-module flag, not the root's
    assert torch.equal(gm(x), model(x))


class RootBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        if self.training:
            return self.a(x)
        return self.a(x) * 2


def test_root_branching_on_training_is_an_error():
    with pytest.raises(TraceError, match=r"RootBranch itself branches on self\.training"):
        trace(RootBranch(), (torch.randn(2, 3),))


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class WithGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 6)
        self.inner = nn.Sequential(nn.Linear(6, 6), DataDependent())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.inner(self.stem(x)))


def test_untraceable_module_is_named_and_leaf_modules_is_the_escape_hatch():
    model = WithGate()
    x = torch.randn(4, 6)
    with pytest.raises(TraceError) as info:
        trace(model, (x,), auto_leaf=False)
    message = str(info.value)
    assert isinstance(info.value, SplitFXError)
    assert "module 'inner.1' (DataDependent)" in message
    assert "leaf_modules=['inner.1']" in message
    for leaves in (["inner.1"], [DataDependent]):
        gm = trace(model, (x,), leaf_modules=leaves)
        calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
        assert calls == ["model.stem", "model.inner.0", "model.inner.1", "model.fc"]
        for sign in (1, -1):
            assert torch.equal(gm(sign * x), model(sign * x))


def test_unknown_leaf_name_is_an_error():
    with pytest.raises(TraceError, match=r"\['nope'\]"):
        trace(WithGate(), (torch.randn(2, 6),), leaf_modules=["inner.1", "nope"])


class Optional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)

    def forward(self, x, mask=None, scale=2.0):
        if mask is not None:
            x = x * mask
        return self.a(x) * scale


def test_optional_forward_arguments_become_concrete_defaults():
    model = Optional()
    x = torch.randn(2, 6)
    gm = trace(model, (x,))
    (linear,) = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert linear.args[0].op == "placeholder" and linear.args[0].name == "x", "mask=None was specialised away"
    assert torch.equal(gm(x), model(x))


class NeedsTwo(nn.Module):
    def forward(self, x, y):
        return x + y


def test_argument_count_errors():
    with pytest.raises(TraceError, match="needs argument 'y'"):
        trace(NeedsTwo(), (torch.randn(2),))
    with pytest.raises(TraceError, match="takes 2 arguments but 3"):
        trace(NeedsTwo(), (torch.randn(2),) * 3)
    gm = trace(NeedsTwo(), (torch.randn(2), torch.randn(2)))
    a, b = torch.randn(2), torch.randn(2)
    assert torch.equal(gm(a, b), a + b)
