"""Unit tests of cut discovery: hand-built cost graphs, then tiny traced models."""
import networkx as nx
import pytest
import torch

from splitfx.passes.cost import probe
from splitfx.passes.cuts import Cut, schedule
from splitfx.passes.node_cost import NodeCost, cost_graph
from splitfx.passes.trace import trace

from checks import assert_eval_equal, assert_interleaved_equals_summed
from tinynets import (
    MLP,
    AugmentedRotary,
    Branchy,
    GridTable,
    HalfBatch,
    NoMask,
    Placement,
    Rotary,
    Tokens,
    Width,
    jitter,
)


def one(position, node, shape, recompute=(), batch_from=0):
    """A cut handing over one tensor."""
    return Cut(position, (node,), (shape,), recompute, batch_from)

def graph(*nodes) -> nx.DiGraph:
    """``(name, op, inputs[, fields])`` in fx order → a cost graph with the records :func:`schedule` reads."""
    costs, edges = {}, []
    for name, op, inputs, *rest in nodes:
        fields = dict(is_tensor=True, shape=(2, 4), batch_dim0=True)
        fields.update(*rest)
        costs[name] = NodeCost(op, "", **fields)
        for i in inputs:
            assert i in costs, f"{i} must come before {name}"
            edges.append((i, name))
    return cost_graph(costs, edges)


def _sched(model, x):
    gm = trace(model, (x,))
    return schedule(probe(gm, (x,)).graph)


# --- hand-built graphs ---------------------------------------------------------------------------


def test_chain_has_a_cut_after_every_node_but_the_input_and_the_last():
    G = graph(("x", "placeholder", []), ("a", "call_module", ["x"]), ("b", "call_module", ["a"]),
              ("c", "call_module", ["b"]), ("output", "output", ["c"]))
    s = schedule(G)
    assert s.order == ["x", "a", "b", "c"] and s.output == "output" and s.free == set()
    assert s.cuts == [one(2, "a", (2, 4)), one(3, "b", (2, 4))]


def test_a_random_draw_is_computed_once_and_handed_over_while_a_table_from_constants_is_free():
    """``noise = torch.rand(...)`` read by two layers: rematerialised, each block would draw its own."""
    table = {"batch_dim0": False, "shape": (4,)}
    G = graph(("x", "placeholder", []), ("w", "get_attr", [], table), ("t", "call_function", ["w"], table),
              ("r", "call_function", [], {**table, "random": True}), ("a", "call_module", ["x", "t", "r"]),
              ("b", "call_module", ["a", "t", "r"]), ("output", "output", ["b"]))
    s = schedule(G, max_tensors=None)
    assert s.free == {"w", "t"} and s.order == ["x", "r", "a", "b"]
    assert [c.nodes for c in s.cuts] == [("x", "r"), ("r", "a")], "the draw crosses every cut after it"


def test_skip_connection_blocks_cuts_inside_it():
    G = graph(("x", "placeholder", []), ("a", "call_module", ["x"]), ("b", "call_module", ["a"]),
              ("c", "call_function", ["a", "b"]), ("d", "call_module", ["c"]), ("output", "output", ["d"]))
    assert [c.position for c in schedule(G).cuts] == [2, 4]  # not 3: a and b both live


def test_tuple_crossing_is_no_cut():
    G = graph(("x", "placeholder", []), ("a", "call_module", ["x"]),
              ("t", "call_function", ["a"], dict(is_tensor=False, shape=None)),
              ("g0", "call_function", ["t"]), ("g1", "call_function", ["t"]),
              ("c", "call_function", ["g0", "g1"]), ("d", "call_module", ["c"]), ("output", "output", ["d"]))
    assert schedule(G).cuts == [one(2, "a", (2, 4)), one(6, "c", (2, 4))]


def test_one_cut_per_handed_over_tensor():
    """A node nobody uses does not change what crosses: the later position replaces the earlier."""
    G = graph(("x", "placeholder", []), ("a", "call_module", ["x"]), ("dead", "call_function", ["x"]),
              ("b", "call_module", ["a"]), ("c", "call_module", ["b"]), ("output", "output", ["c"]))
    assert schedule(G).cuts == [one(3, "a", (2, 4)), one(4, "b", (2, 4))]


def test_free_nodes_are_outside_the_order_and_never_cross():
    G = graph(("p", "get_attr", [], dict(batch_dim0=False)), ("q", "call_function", ["p"], dict(batch_dim0=False)),
              ("x", "placeholder", []), ("a", "call_module", ["x"]), ("b", "call_function", ["a", "q"]),
              ("c", "call_module", ["b"]), ("output", "output", ["c"]))
    s = schedule(G)
    assert s.free == {"p", "q"}
    assert s.order == ["x", "a", "b", "c"]
    assert s.cuts == [one(2, "a", (2, 4)), one(3, "b", (2, 4))]


def test_second_input_stays_live_until_used():
    G = graph(("x", "placeholder", []), ("y", "placeholder", []), ("a", "call_module", ["x"]),
              ("b", "call_function", ["a", "y"]), ("c", "call_module", ["b"]), ("output", "output", ["c"]))
    assert schedule(G).cuts == [one(4, "b", (2, 4))]


@pytest.mark.parametrize("batch_int,batch_dim0,expected", [
    (True, True, [one(3, "a", (2, 4), ("s",)), one(4, "b", (2, 4), ("s",))]),
    (True, False, []),  # the cut tensor does not carry the batch: the int cannot be rebuilt
    (False, True, []),  # any other int crossing makes the cut illegal
])
def test_batch_size_ints_are_recomputed_other_ints_block(batch_int, batch_dim0, expected):
    G = graph(("x", "placeholder", []),
              ("s", "call_function", ["x"], dict(is_tensor=False, shape=None, batch_int=batch_int, batch_dim0=False)),
              ("a", "call_module", ["x"], dict(batch_dim0=batch_dim0)),
              ("b", "call_module", ["a"], dict(batch_dim0=batch_dim0)),
              ("c", "call_function", ["b", "s"]), ("d", "call_module", ["c"]), ("output", "output", ["d"]))
    assert schedule(G).cuts[:-1] == expected
    assert schedule(G).cuts[-1] == one(5, "c", (2, 4))


# --- traced models -------------------------------------------------------------------------------


def test_sequential_net_cuts_after_every_layer():
    s = _sched(MLP(), torch.randn(5, 6))
    assert s.order == ["x", "fc1", "act1", "fc2", "act2", "fc3"]
    assert s.free == set() and s.output == "output"
    assert s.cuts == [one(2, "fc1", (5, 8)), one(3, "act1", (5, 8)), one(4, "fc2", (5, 8)), one(5, "act2", (5, 8))]


def test_no_cut_inside_a_residual_block_or_between_concat_branches():
    s = _sched(Branchy(depth=2), torch.randn(2, 3, 6, 6))
    pos = {n: i for i, n in enumerate(s.order)}
    assert [c.nodes[0] for c in s.cuts] == ["stem", "act", "add", "layers_0_relu_1", "add_1", "layers_1_relu_1",
                                        "cat", "mul", "mean"]
    at = {c.position for c in s.cuts}
    for block, inp in (("0", "act"), ("1", "layers_0_relu_1")):
        inside = range(pos[f"layers_{block}_conv1"] + 1, pos["add" if block == "0" else "add_1"] + 1)
        assert not at & set(inside), f"cut inside residual block {block} while {inp} is live"
    assert pos["right"] not in at, "no cut between the two branches of the concat"
    assert all(c.shapes[0] == (2, 4, 6, 6) for c in s.cuts[:-1]) and s.cuts[-1].shapes[0] == (2, 4)
    assert all(c.recompute == () for c in s.cuts)


def test_parameter_via_get_attr_is_free_and_never_crosses():
    s = _sched(Branchy(depth=1), torch.randn(2, 3, 6, 6))
    assert s.free == {"scale"}
    assert "scale" not in s.order and all(c.nodes[0] != "scale" for c in s.cuts)
    pos = {n: i for i, n in enumerate(s.order)}
    assert pos["mul"] in {c.position for c in s.cuts}, "the cut right before x * scale is legal"


def test_class_token_expanded_to_the_batch_recomputes_the_batch_int():
    s = _sched(Tokens(), torch.randn(2, 3, 6))
    assert s.free == {"cls", "pos", "mul"}, "pos * 2 depends on parameters alone"
    assert s.order == ["x", "getattr_1", "getitem", "embed", "expand", "cat", "add", "mix", "relu", "getitem_1",
                       "head"]
    assert s.cuts[0] == one(4, "embed", (2, 3, 8), ("getitem",))
    assert [c.position for c in s.cuts] == [4, 6, 7, 8, 9, 10]  # none at 5: expand and embed are both live
    assert all(c.recompute == () for c in s.cuts[1:])
    assert not {c.nodes[0] for c in s.cuts} & s.free


def test_shape_ints_the_batch_does_not_change_are_baked_not_handed_over():
    s = _sched(Width(), torch.randn(2, 4, 6))
    assert s.baked == {"getitem": 4}
    assert s.free == {"mul"}, "n * 6 is computed from a shape int alone"
    assert [c.nodes for c in s.cuts] == [("a",), ("relu",), ("b",), ("reshape",)]
    assert s.cuts[-1] == one(7, "reshape", (2, 24))


def test_a_table_built_from_the_input_shape_is_free_and_every_layer_can_be_cut():
    """Like deepseek_vit's rotary embedding: without it being free, no cut between layers is legal."""
    import splitfx

    model, x = Rotary(), torch.randn(2, 5, 6)
    s = _sched(model, x)
    assert {"arange", "cos"} <= s.free and s.baked == {"getitem": 5}
    assert [c.nodes for c in s.cuts] == [("embed",), ("add",), ("add_1",), ("add_2",), ("mean",)]
    sm = splitfx.convert(model, x, 3, num_classes=3)
    assert [b.output_shapes for b in sm.plan.blocks] == [[[2, 5, 8]], [[2, 5, 8]], None]
    assert "expect_shapes" in sm.blocks[1].code and "arange" in sm.blocks[2].code
    assert_eval_equal(sm, model, x)
    assert_interleaved_equals_summed(sm, x, torch.tensor([0, 2]))
    with pytest.raises(splitfx.SplitFXError, match="convert the model again"):
        sm.blocks[1](torch.randn(2, 6, 8))


def test_a_train_only_random_call_in_the_models_own_forward_is_gated_and_drawn_once_per_step():
    """sapiens2: ``if self.training: coords = augment(coords)`` at the top level. The call runs on the
    training flag; built from shapes alone it is free, so every block recomputes it, and a step
    replays the first draw for the others: the blocks see the draw the model makes."""
    import splitfx
    from splitfx.passes.replay import one_draw_per_step

    model, x, y = AugmentedRotary(), torch.randn(2, 5, 6), torch.tensor([0, 2])
    gated = [n for n in trace(model, (x,)).graph.nodes if getattr(n.target, "train_only_of", None) is jitter]
    assert len(gated) == 1 and gated[0].args[0].target == "model.training"
    s = _sched(model, x)
    assert {gated[0].name, "cos"} <= s.free and [c.nodes for c in s.cuts][1:4] == [("add",), ("add_1",), ("add_2",)]
    sm = splitfx.convert(model, x, 3, num_classes=3)
    assert all("train_only_jitter" in b.code for b in sm.blocks[:3])
    assert_eval_equal(sm, model, x)

    def staged():
        h = x
        for block in sm.blocks:
            h = block(*h) if isinstance(h, tuple) else block(h)
        return h

    sm.train()
    torch.manual_seed(1)
    with one_draw_per_step():
        out, after = staged(), torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(out, model(x)), "one draw, as the model makes it, for every block"
    assert torch.equal(after, torch.rand(1)), "the stream advanced once, as in the model"
    torch.manual_seed(1)
    assert not torch.equal(staged(), model(x)), "outside a step each block draws anew: the test can tell"
    torch.manual_seed(1)
    losses = [loss.item() for loss in sm.local_losses(x, y)]
    torch.manual_seed(1)
    assert losses[-1] == torch.nn.functional.cross_entropy(model(x), y).item()
    assert_interleaved_equals_summed(sm, x, y)


def test_a_block_with_baked_constants_refuses_inputs_of_another_size():
    import splitfx

    model, x = Width(), torch.randn(2, 4, 6)
    sm = splitfx.convert(model, x, 2, split_points=["a"], num_classes=3)
    assert "expect_shapes" in sm.blocks[1].code
    out = sm.blocks[1](sm.blocks[0](x))
    assert torch.equal(out, model(x))
    with pytest.raises(splitfx.SplitFXError, match="convert the model again"):
        sm.blocks[1](torch.randn(2, 5, 6))


def test_a_run_on_another_grid_of_as_many_tokens_fails_where_the_grid_is_measured():
    """The later blocks get H·W tokens either way: the block computing H and W refuses the 2×8 grid."""
    import splitfx

    model = GridTable()
    sm = splitfx.convert(model, torch.randn(2, 4, 4, 4), 3, num_classes=3)
    assert "expect_constant" in sm.blocks[0].code and "expect_shapes" in sm.blocks[1].code
    assert_eval_equal(sm, model, torch.randn(2, 4, 4, 4))
    with pytest.raises(splitfx.SplitFXError, match="holds it as the constant 4"):
        next(sm.local_losses(torch.randn(2, 4, 2, 8), torch.tensor([0, 1])))


def test_an_int_computed_from_the_batch_size_is_never_a_shape_constant():
    """B // 2 is 1 at batch 2 and at batch 3, yet changes at 4: baked, a later block would be wrong
    at batch 4; live, it is an int no cut may hand over."""
    s = _sched(HalfBatch(), torch.randn(2, 4))
    assert s.baked == {} and "arange" in s.order
    assert s.cuts == []


def test_a_none_made_from_the_input_is_a_constant_every_layer_can_be_cut_across():
    """naflexvit's attention mask is None for a dense image, yet a node: handed over it blocked every cut."""
    import splitfx

    model, x = NoMask(), torch.randn(2, 5, 6)
    s = _sched(model, x)
    assert s.baked["mask_of"] is None
    assert [c.nodes for c in s.cuts][:4] == [("embed",), ("add",), ("add_1",), ("add_2",)]
    sm = splitfx.convert(model, x, 3, num_classes=3)
    assert_eval_equal(sm, model, x)
    assert_interleaved_equals_summed(sm, x, torch.tensor([0, 2]))


def test_a_dtype_is_never_a_constant_and_a_list_changed_after_it_is_made_is_not_either():
    """Baked, x.dtype would be float32 under bfloat16 autocast too (and x.device cpu after .to(cuda));
    a list appended to after it was made would be baked in its final state."""
    dtype = _sched(Placement(), torch.randn(2, 3, 4))
    assert not [v for v in dtype.baked.values() if v is not None] and dtype.cuts == [], dtype.baked
    grown = _sched(Placement(grow=True), torch.randn(2, 3, 4))
    assert "size_of" not in grown.baked and [c.nodes for c in grown.cuts] == [("reshape",)], grown.baked
