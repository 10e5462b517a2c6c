"""Unit tests of the cost pass (fake-tensor probe) and the aux-head cost probe on tiny modules.

The probe's saved-for-backward prediction is checked node by node against what
:class:`SavedTensorMeter` measures on a real forward + backward of the same graph: the same storages
(up to renaming), saved by the same nodes, with the same sizes."""
import dataclasses

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from splitfx.base.meter import SavedTensorMeter, state_keys, storage_key
from splitfx.passes.aux_cost import AuxProbe
from splitfx.passes.cost import probe
from splitfx.passes.node_cost import node_cost
from splitfx.passes.trace import trace

from tinynets import Branchy, Shared, Tokens, Width

F32 = 4


def _canonical(per_node: dict[str, tuple]) -> dict[str, tuple[int, ...]]:
    """Storage keys renamed 0, 1, 2, ... in order of first appearance (keys differ between runs)."""
    ids: dict[int, int] = {}
    return {n: tuple(ids.setdefault(k, len(ids)) for k in keys) for n, keys in per_node.items() if keys}


def _measure(gm: fx.GraphModule, x: torch.Tensor):
    """Real forward + backward under the meter: per-node saved keys, key → bytes, peak, live after."""
    per_node: dict[str, list[int]] = {}
    sizes: dict[int, int] = {}
    current = [None]

    def on_save(key, nbytes):
        per_node.setdefault(current[0], []).append(key)
        sizes[key] = nbytes

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            current[0] = n.name
            return super().run_node(n)

    with SavedTensorMeter(state_keys([gm.model]), on_save=on_save) as meter:
        out = Recorder(gm).run(x)
        peak_after_forward = meter.peak
        current[0] = None  # the loss below is not part of the graph
        out.square().sum().backward()
        live_after = meter.live
    per_node = {n: tuple(dict.fromkeys(keys)) for n, keys in per_node.items() if n is not None}
    return per_node, sizes, peak_after_forward, live_after


@pytest.mark.parametrize("make,shape,train", [
    (Shared, (4, 6), True),
    (Shared, (4, 6), False),
    (Branchy, (2, 3, 6, 6), True),
    (Tokens, (2, 3, 6), True),
], ids=["shared-train", "shared-eval", "branchy", "tokens"])
def test_predicted_saves_equal_measured_saves_node_by_node(make, shape, train):
    model = make().train(train)
    x = torch.randn(shape)
    gm = trace(model, (x,))
    P = probe(gm, (x,))
    G = P.graph
    storages = G.graph["storages"]
    predicted = {n: node_cost(G, n).saved for n in G.nodes}
    measured, sizes, peak, live = _measure(gm, x)

    assert _canonical(predicted) == _canonical(measured)
    pred_bytes = [storages[k] for k in dict.fromkeys(k for keys in predicted.values() for k in keys)]
    real_bytes = [sizes[k] for k in dict.fromkeys(k for keys in measured.values() for k in keys)]
    assert pred_bytes == real_bytes
    assert set(storages) == {k for keys in predicted.values() for k in keys}
    assert sum(storages.values()) == peak, "E2E saved bytes of the whole graph"
    assert live == 0


def test_parameter_storages_are_never_counted():
    model = Shared()
    x = torch.randn(4, 6)
    P = probe(trace(model, (x,)), (x,))
    G = P.graph
    assert node_cost(G, "w").saved == ()  # a parameter read via get_attr
    # matmul(h, w) saves h and w; only h is an activation, the same storage left/right save
    assert node_cost(G, "matmul").saved == node_cost(G, "left").saved == node_cost(G, "right").saved
    # inp(x) saves the input x and its transposed weight; only x counts
    (key,) = node_cost(G, "inp").saved
    assert G.graph["storages"][key] == 4 * 6 * F32
    assert not set(G.graph["storages"]) & P.exclude


def test_hand_computed_saves_of_a_linear_relu_chain():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 6)
    G = probe(trace(model, (x,)), (x,)).graph
    storages = G.graph["storages"]
    (k0,) = node_cost(G, "_0").saved
    (k1,) = node_cost(G, "_1").saved
    assert node_cost(G, "_2").saved == (k1,), "the Linear saves the very storage the ReLU saved"
    assert storages == {k0: 5 * 6 * F32, k1: 5 * 8 * F32}


def test_flops_of_linear_conv_matmul_and_elementwise():
    G = probe(trace(Shared(), (torch.randn(4, 6),)), (torch.randn(4, 6),)).graph
    assert node_cost(G, "inp").flops == 2 * 4 * 6 * 8
    assert node_cost(G, "shared").flops == node_cost(G, "shared_1").flops == 2 * 4 * 8 * 8
    assert node_cost(G, "matmul").flops == 2 * 4 * 8 * 4
    assert node_cost(G, "out").flops == 2 * 4 * 8 * 3
    for name in ("bn", "relu", "tanh", "add", "cat", "gelu", "w", "x", "output"):
        assert node_cost(G, name).flops == 0, name

    x = torch.randn(2, 3, 6, 6)
    G = probe(trace(Branchy(), (x,)), (x,)).graph
    assert node_cost(G, "stem").flops == 2 * 2 * 4 * 6 * 6 * 3 * 3 * 3
    assert node_cost(G, "layers_0_conv1").flops == 2 * 2 * 4 * 6 * 6 * 4 * 3 * 3
    assert node_cost(G, "left").flops == 2 * 2 * 2 * 6 * 6 * 4
    assert node_cost(G, "fc").flops == 2 * 2 * 4 * 5


def test_param_bytes_counted_once_at_first_use():
    model = Shared()
    x = torch.randn(4, 6)
    G = probe(trace(model, (x,)), (x,)).graph
    assert node_cost(G, "shared").param_bytes == (8 * 8 + 8) * F32
    assert node_cost(G, "shared_1").param_bytes == 0, "second call of the same module"
    assert node_cost(G, "w").param_bytes == 8 * 4 * F32, "parameter read via get_attr"
    assert node_cost(G, "bn").param_bytes == 2 * 8 * F32, "weight and bias; running stats are buffers"
    assert node_cost(G, "matmul").param_bytes == 0
    assert sum(node_cost(G, n).param_bytes for n in G.nodes) == sum(p.numel() * F32 for p in model.parameters())


def test_node_attributes_edges_and_order():
    model = Shared()
    x = torch.randn(4, 6)
    gm = trace(model, (x,))
    P = probe(gm, (x,))
    G = P.graph
    assert list(G.nodes) == [n.name for n in gm.graph.nodes]
    assert set(G.edges) == {(i.name, n.name) for n in gm.graph.nodes for i in n.all_input_nodes}
    for n in gm.graph.nodes:
        cost = node_cost(G, n.name)
        assert (cost.op, cost.target) == (n.op, str(n.target))
        assert (cost.scope, cost.cls) == (n.meta["splitfx"]["scope"], n.meta["splitfx"]["cls"])
    cat = node_cost(G, "cat")
    assert cat.is_tensor and cat.shape == (4, 8) and cat.dtype == torch.float32
    assert cat.out_bytes == 4 * 8 * F32
    with pytest.raises(dataclasses.FrozenInstanceError):
        cat.flops = 0  # a pass that learns more about a node makes a new record
    assert node_cost(G, "out").shape == (4, 3) and node_cost(G, "output").out_bytes == 4 * 3 * F32
    assert node_cost(G, "cat").batch_dim0 and not node_cost(G, "w").batch_dim0
    assert not any(node_cost(G, n).batch_int for n in G.nodes)


def test_batch_ints_and_other_ints_are_told_apart():
    x = torch.randn(2, 3, 6)
    G = probe(trace(Tokens(), (x,)), (x,)).graph
    assert node_cost(G, "getitem").is_tensor is False
    assert node_cost(G, "getitem").value == 2 and node_cost(G, "getitem").batch_int
    assert not node_cost(G, "getattr_1").batch_int, "the shape tuple itself is no int"
    assert node_cost(G, "embed").batch_dim0
    assert not node_cost(G, "pos").batch_dim0 and not node_cost(G, "mul").batch_dim0

    x = torch.randn(2, 4, 6)  # batch 2, width 4
    G = probe(trace(Width(), (x,)), (x,)).graph
    assert node_cost(G, "getitem").value == 4 and not node_cost(G, "getitem").batch_int
    assert node_cost(G, "mul").value == 24 and not node_cost(G, "mul").batch_int


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        return self.fc(x.view(2, 24))


def test_model_that_rejects_another_batch_size_has_no_batch_ints_and_dim0_by_size():
    """No batch int can be recomputed; dim 0 counts as the batch exactly where it has the batch's size."""
    x = torch.randn(2, 4, 6)
    G = probe(trace(FixedBatch(), (x,)), (x,)).graph
    assert node_cost(G, "fc").shape == (2, 3)
    assert not any(node_cost(G, n).batch_int for n in G.nodes)
    for n in G.nodes:
        shape = node_cost(G, n).shape
        assert node_cost(G, n).batch_dim0 == bool(shape and shape[0] == 2), n


def test_probe_runs_no_real_compute_and_keeps_fake_values():
    model = Shared().train()
    x = torch.randn(4, 6)
    gm = trace(model, (x,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    P = probe(gm, (x,))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed by probing"
    assert all(p.grad is None for p in model.parameters())
    assert isinstance(P.values["bn"], FakeTensor) and isinstance(P.outputs, FakeTensor)
    assert tuple(P.outputs.shape) == (4, 3)
    assert P.fake(x) is P.fake(x), "fake twins are memoised"


class Masked(nn.Module):
    """Data-dependent output shape: fake tensors cannot run it."""

    def forward(self, x):
        return x + x[x > 0].sum()


class WithMasked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.mask = Masked()
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(self.mask(self.a(x)))


def test_leaf_that_fake_tensors_cannot_run_is_probed_on_real_tensors():
    model = WithMasked()
    x = torch.randn(4, 6)
    gm = trace(model, (x,), leaf_modules=["mask"])
    P = probe(gm, (x,))
    assert isinstance(P.values["mask"], FakeTensor) and node_cost(P.graph, "mask").shape == (4, 8)
    assert node_cost(P.graph, "b").flops == 2 * 4 * 8 * 3
    assert tuple(P.outputs.shape) == (4, 3)


# --- aux heads -----------------------------------------------------------------------------------


class Head(nn.Module):
    def __init__(self, features: int, classes: int = 3):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, features, target):
        """``features``: the tensors a cut hands over (one here)."""
        f = features[0] if isinstance(features, tuple) else features
        return F.cross_entropy(self.fc(f.flatten(1)), target)


def _real_head_bytes(module: nn.Module, shape: tuple, classes: int = 3) -> list[int]:
    sizes: dict[int, int] = {}
    f = torch.randn(shape, requires_grad=True)
    target = torch.randint(0, classes, (shape[0],))
    with SavedTensorMeter(state_keys([module]), on_save=lambda k, b: sizes.__setitem__(k, b)):
        module(f, target).backward()
    return sorted(sizes.values())


def test_aux_cost_of_a_head_matches_measurement_and_shares_the_blocks_storage():
    model = Shared()
    x = torch.randn(4, 6)
    P = probe(trace(model, (x,)), (x,))
    aux = AuxProbe(P, (x,))
    built = []

    def build():
        built.append(Head(8))
        return built[-1]

    cost = aux.cost(("relu",), "linear-head", build)
    assert cost.params == 8 * 3 + 3
    assert cost.flops == 2 * 4 * 8 * 3
    assert sorted(cost.saves.values()) == _real_head_bytes(built[0], (4, 8))
    (relu_key,) = node_cost(P.graph, "relu").saved
    assert cost.saves[relu_key] == 4 * 8 * F32, "the head saves the storage the ReLU already saved"
    again = aux.cost(("tanh",), "linear-head", build)  # same key: the module is built once
    assert len(built) == 1
    (tanh_key,) = node_cost(P.graph, "tanh").saved  # tanh saves its own output
    assert again.saves[tanh_key] == 4 * 8 * F32 and relu_key not in again.saves
    aux.cost(("tanh",), "other", build)
    assert len(built) == 2


def test_output_loss_saves_match_measurement():
    model = Shared()
    x = torch.randn(4, 6)
    P = probe(trace(model, (x,)), (x,))
    saves = AuxProbe(P, (x,)).output_loss(nn.CrossEntropyLoss())

    class Loss(nn.Module):
        def forward(self, out, target):
            return F.cross_entropy(out, target)

    assert sorted(saves.values()) == _real_head_bytes(Loss(), (4, 3))
    # log-softmax output, the int64 target, nll_loss's scalar total weight
    assert sorted(saves.values()) == [F32, 4 * 8, 4 * 3 * F32]


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 3)

    def forward(self, x):
        y = self.a(x)
        return y, y * 2


def test_a_loss_over_a_tuple_output_is_costed_on_every_tensor_it_reads():
    x = torch.randn(4, 6)
    P = probe(trace(TwoOutputs(), (x,)), (x,))
    saves = AuxProbe(P, (x,)).output_loss(lambda out, target: out[0].pow(2).mean() + out[1].pow(2).mean())
    first, second = P.outputs
    # pow(2) keeps each output it squares: both outputs' storages, once each
    assert saves == {storage_key(first): 4 * 3 * F32, storage_key(second): 4 * 3 * F32}
