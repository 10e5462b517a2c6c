"""Unit tests of the emit pass: blocks cut out of a tiny traced model, run one after another."""
import copy
import itertools
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from splitfx.passes.cost import probe
from splitfx.passes.cuts import schedule
from splitfx.passes.emit import block_nodes, block_parameters, emit_block, writes_input_in_place
from splitfx.passes.trace import trace

from tinynets import Branchy, Shared, Tokens

# Branchy(depth=2) order: x stem act | l0.conv1 l0.relu l0.conv2 add | l0.relu_1 (in place on add) ...
# cut nodes: stem act add layers_0_relu_1 add_1 layers_1_relu_1 cat mul mean
BRANCHY_CUTS = ("add", "layers_1_relu_1", "cat")


def split(model, x, cut_nodes, detach=True):
    gm = trace(model, (x,))
    G = probe(gm, (x,)).graph
    sched = schedule(G)
    by_node = {c.nodes[0]: c for c in sched.cuts}
    cuts = [None, *(by_node[n] for n in cut_nodes), None]
    ends = [0, *(c.position for c in cuts[1:-1]), len(sched.order)]
    nodes = [block_nodes(gm, G, sched, s, e) for s, e in itertools.pairwise(ends)]
    blocks = [emit_block(gm, nodes[k], cuts[k], cuts[k + 1], k, detach) for k in range(len(nodes))]
    return gm, nodes, blocks


def run(blocks, x):
    for block in blocks:
        x = block(x)
    return x


def _body(block: fx.GraphModule) -> list[tuple[str, str]]:
    return [(n.op, str(n.target)) for n in block.graph.nodes]


@pytest.mark.parametrize("train", [False, True])
def test_blocks_run_one_after_another_equal_the_model(train):
    model = Branchy(depth=2).train(train)
    x = torch.randn(2, 3, 6, 6)
    _, _, blocks = split(model, x, BRANCHY_CUTS)
    assert len(blocks) == 4
    for inp in (x, torch.randn(3, 3, 6, 6)):
        with torch.no_grad():
            assert torch.equal(run(blocks, inp), model(inp))
    out = run(blocks, x)
    assert torch.equal(out, model(x)) and out.requires_grad


def test_each_block_after_the_first_starts_with_detach_and_clones_before_in_place():
    model = Branchy(depth=2)
    _, _, blocks = split(model, torch.randn(2, 3, 6, 6), BRANCHY_CUTS)
    assert [type(b).__name__ for b in blocks] == ["Block0", "Block1", "Block2", "Block3"]
    assert all(b.model is model for b in blocks), "bound to the user's model, no copies"
    assert _body(blocks[0])[:2] == [("placeholder", "x"), ("call_module", "model.stem")]
    # block 1's first op is the in-place ReLU on its input: detach, then clone
    assert _body(blocks[1])[:4] == [("placeholder", "add"), ("call_method", "detach"), ("call_method", "clone"),
                                    ("call_module", "model.layers.0.relu")]
    assert _body(blocks[2])[:3] == [("placeholder", "layers_1_relu_1"), ("call_method", "detach"),
                                    ("call_module", "model.left")]
    assert _body(blocks[3])[:2] == [("placeholder", "cat"), ("call_method", "detach")]
    assert ("call_method", "clone") not in _body(blocks[2]) + _body(blocks[3])


def test_attached_blocks_skip_detach_but_keep_the_clone():
    model = Branchy(depth=2)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 6)
    _, _, blocks = split(model, x, BRANCHY_CUTS, detach=False)
    assert [type(b).__name__ for b in blocks][1:] == ["AttachedBlock1", "AttachedBlock2", "AttachedBlock3"]
    assert _body(blocks[1])[:3] == [("placeholder", "add"), ("call_method", "clone"),
                                    ("call_module", "model.layers.0.relu")]
    assert all(("call_method", "detach") not in _body(b) for b in blocks)
    run(blocks, x).sum().backward()
    reference(x).sum().backward()  # attached, the blocks give end to end training's gradients, every one
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, q.grad), name


def test_detached_blocks_isolate_gradients():
    model = Branchy(depth=2)
    x = torch.randn(2, 3, 6, 6)
    gm, nodes, blocks = split(model, x, BRANCHY_CUTS)
    h = blocks[0](x)
    blocks[1](h).sum().backward()
    got = {id(p) for p in model.parameters() if p.grad is not None}
    assert got == {id(p) for p in block_parameters(gm, nodes[1])}


def test_in_place_first_op_does_not_touch_the_previous_blocks_output():
    """Block 1 starts with ReLU(inplace=True) on the handed-over tensor: without the clone it would
    overwrite block 0's output, which block 0's own loss has saved for backward."""
    model = Branchy(depth=2)
    x = torch.randn(2, 3, 6, 6)
    _, _, blocks = split(model, x, BRANCHY_CUTS)
    h = blocks[0](x)
    kept = h.detach().clone()
    assert (kept < 0).any(), "the ReLU must have something to change"
    local = (h * h).sum()  # saves h
    blocks[1](h)
    assert torch.equal(h, kept)
    local.backward()  # would raise "modified by an inplace operation" without the clone
    assert model.stem.weight.grad is not None


def test_block_parameters_are_exactly_the_ones_used():
    model = Branchy(depth=2)
    gm, nodes, _ = split(model, torch.randn(2, 3, 6, 6), BRANCHY_CUTS)
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    assert ids(block_parameters(gm, nodes[0])) == ids([*model.stem.parameters(), *model.layers[0].conv1.parameters(),
                                                       *model.layers[0].conv2.parameters()])
    assert ids(block_parameters(gm, nodes[1])) == ids(model.layers[1].parameters())
    assert ids(block_parameters(gm, nodes[2])) == ids([*model.left.parameters(), *model.right.parameters()])
    assert ids(block_parameters(gm, nodes[3])) == ids([model.scale, *model.fc.parameters()])


def test_module_called_in_two_blocks_lists_its_parameters_in_both():
    model = Shared()
    x = torch.randn(4, 6)
    gm, nodes, blocks = split(model, x, ("relu", "add"))
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    shared = ids(model.shared.parameters())
    assert ids(block_parameters(gm, nodes[1])) == shared
    assert ids(block_parameters(gm, nodes[2])) == shared | ids([model.w, *model.left.parameters(),
                                                               *model.right.parameters(), *model.out.parameters()])
    model.eval()
    with torch.no_grad():
        assert torch.equal(run(blocks, x), model(x))


def test_block_nodes_rematerialise_free_nodes_and_end_with_the_output():
    model = Branchy(depth=2)
    _, nodes, blocks = split(model, torch.randn(2, 3, 6, 6), BRANCHY_CUTS)
    names = [[n.name for n in ns] for ns in nodes]
    assert names[3] == ["scale", "mul", "mean", "fc", "output"]
    assert not any("scale" in ns for ns in names[:3])
    assert names[0] == ["x", "stem", "act", "layers_0_conv1", "layers_0_relu", "layers_0_conv2", "add"]
    assert names[2] == ["left", "right", "cat"]
    assert [n.op for n in blocks[3].graph.nodes].count("get_attr") == 1


def test_batch_int_is_recomputed_from_the_cut_tensor():
    model = Tokens()
    _, _, blocks = split(model, torch.randn(2, 3, 6), ("embed",))
    assert _body(blocks[1])[:3] == [("placeholder", "embed"), ("call_method", "detach"), ("call_method", "size")]
    x = torch.randn(5, 3, 6)  # another batch size than the one traced with
    assert torch.equal(run(blocks, x), model(x))


class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.inplace_relu = nn.ReLU(inplace=True)
        self.model.relu = nn.ReLU()


@pytest.mark.parametrize("op,target,kwargs,expected", [
    ("call_module", "model.inplace_relu", {}, True),
    ("call_module", "model.relu", {}, False),
    ("call_method", "add_", {}, True),
    ("call_method", "add", {}, False),
    ("call_method", "__add__", {}, False),
    ("call_function", operator.iadd, {}, True),
    ("call_function", operator.add, {}, False),
    ("call_function", F.relu, {"inplace": True}, True),
    ("call_function", F.relu, {}, False),
    ("call_function", torch.relu_, {}, True),
    ("call_function", torch.add, {}, False),
])
def test_writes_input_in_place(op, target, kwargs, expected):
    graph = fx.Graph()
    x = graph.placeholder("x")
    y = graph.placeholder("y")
    user = graph.create_node(op, target, (x,) if op == "call_module" else (x, y), kwargs)
    graph.output(user)
    gm = fx.GraphModule(_Holder(), graph)
    assert writes_input_in_place(gm, user, x) is expected
    if op != "call_module":
        assert writes_input_in_place(gm, user, y) is False, "only the first argument is written"
