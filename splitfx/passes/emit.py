"""Emit pass: one GraphModule per block, bound to the user's model (no copies of any module).

Each block after the first starts with an explicit ``detach`` node on each of its inputs (the tensors
its cut hands over), followed by a ``clone`` when an op of the block writes that input — or a view
or alias of it, through Identity, DropPath or a reshape — in place (``ReLU(inplace=True)``):
``detach`` shares storage and version counter with the upstream tensor, which the previous block
or its aux head may still need for backward. Parameters, constants and whatever is computed from
them and the inputs' shape ints alone are rematerialised inside each block that uses them, so they
are never detached; a shape int (or another constant the batch does not change) one block computes
and another reads is a constant in the reader and checked in the block that computes it. A trainable
parameter two blocks use (only ``tied="detach"`` cuts between its uses) is trained by the first and
read detached by the later ones.
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call

from ..base.errors import SplitFXError
from ..base.tensors import node_parameters
from .bind import attach
from .cuts import Cut, Schedule

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                      operator.ilshift, operator.irshift, operator.imatmul}


def writes_input_in_place(gm: fx.GraphModule, user: fx.Node, value: fx.Node) -> bool:
    """Whether ``user`` mutates ``value`` (its first argument) in place."""
    if not user.args or user.args[0] is not value:
        return False
    if user.op == "call_module":
        return getattr(gm.get_submodule(user.target), "inplace", False) is True
    if user.op == "call_method":
        return user.target.endswith("_") and not user.target.endswith("__")
    if user.op == "call_function":
        name = getattr(user.target, "__name__", "")
        return (user.kwargs.get("inplace") is True or user.target in _INPLACE_FUNCTIONS
                or (name.endswith("_") and not name.endswith("__")))
    return False


# Calls whose output may share storage with their first argument: views, and what returns its input.
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t",
                 "expand", "expand_as", "squeeze", "unsqueeze", "narrow", "select", "contiguous", "detach",
                 "chunk", "split", "unbind", "movedim", "as_strided", "type_as", "to", "float", "__getitem__"}
_VIEW_FUNCTIONS = {"flatten", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "narrow", "select",
                   "chunk", "split", "unbind", "movedim", "getitem", "identity"}


def may_alias(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s output may share storage with its first argument (conservatively: every
    parameter-free module may return its input, as Identity, DropPath and in-place activations do)."""
    if node.op == "call_module":
        return next(gm.get_submodule(node.target).parameters(), None) is None
    if node.op == "call_method":
        return node.target in _VIEW_METHODS or writes_input_in_place(gm, node, node.args[0])
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return name in _VIEW_FUNCTIONS or writes_input_in_place(gm, node, node.args[0])
    return False


def written_in_place(gm: fx.GraphModule, src: fx.Node, nodes: list[fx.Node]) -> bool:
    """Whether any of ``nodes`` writes ``src``, or a view or alias of it, in place."""
    aliases = {src}
    for n in nodes:
        if n.op == "output" or not n.args or not isinstance(n.args[0], fx.Node) or n.args[0] not in aliases:
            continue
        if writes_input_in_place(gm, n, n.args[0]):
            return True
        if may_alias(gm, n):
            aliases.add(n)
    return False


def free_ancestors(G: nx.DiGraph, free: set[str], names: Iterable[str]) -> set[str]:
    """Free nodes (parameters, and what is computed from them and shape ints alone) that ``names`` depend on."""
    found: set[str] = set()
    stack = [p for n in names for p in G.predecessors(n) if p in free]
    while stack:
        n = stack.pop()
        if n not in found:
            found.add(n)
            stack.extend(p for p in G.predecessors(n) if p in free)
    return found


def block_parameters(gm: fx.GraphModule, nodes: Iterable[fx.Node]) -> list[nn.Parameter]:
    """Parameters used by ``nodes`` (leaf modules and ``get_attr``), each once, in order."""
    params = {id(p): p for n in nodes for p in node_parameters(gm, n)}
    return list(params.values())


def read_detached(gm: fx.GraphModule, nodes: Sequence[Sequence[fx.Node]]) -> list[list[nn.Parameter]]:
    """Per block, the trainable parameters it uses that an earlier block uses too: that block trains
    each, this one reads it detached (two blocks use one only where ``tied="detach"`` cut between)."""
    seen: set[int] = set()
    found = []
    for block in nodes:
        params = [p for p in block_parameters(gm, block) if p.requires_grad]
        found.append([p for p in params if id(p) in seen])
        seen |= {id(p) for p in params}
    return found


def owned_parameters(gm: fx.GraphModule, nodes: Sequence[Sequence[fx.Node]]) -> tuple[tuple[nn.Parameter, ...], ...]:
    """Each block's parameters (:func:`block_parameters`) less those it reads detached: what its loss trains."""
    return tuple(tuple(p for p in block_parameters(gm, block) if all(p is not q for q in detached))
                 for block, detached in zip(nodes, read_detached(gm, nodes), strict=True))


def call_detached(module: nn.Module, names: tuple[str, ...], *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with its parameters ``names`` read detached."""
    return functional_call(module, {name: module.get_parameter(name).detach() for name in names}, args, kwargs)


def _copy(gm: fx.GraphModule, graph: fx.Graph, node: fx.Node, env: dict[fx.Node, Any],
          detached: Sequence[nn.Parameter]) -> fx.Node:
    """``node`` copied into ``graph``, reading the parameters among ``detached`` detached: a
    ``get_attr`` of one is followed by ``detach()``, a module holding one is called through
    :func:`call_detached`."""
    held = {id(p) for p in node_parameters(gm, node)} & {id(p) for p in detached} if detached else set()
    if not held:
        return graph.node_copy(node, env.__getitem__)
    if node.op == "get_attr":
        return graph.call_method("detach", (graph.node_copy(node, env.__getitem__),))
    names = tuple(name for name, p in gm.get_submodule(node.target).named_parameters() if id(p) in held)
    args, kwargs = fx.map_arg((node.args, node.kwargs), env.__getitem__)
    call = graph.create_node("call_function", call_detached, (graph.get_attr(node.target), names, *args), kwargs,
                             name=node.name)
    call.meta.update(node.meta)
    return call


def block_nodes(gm: fx.GraphModule, G: nx.DiGraph, sched: Schedule, start: int, end: int) -> list[fx.Node]:
    """The fx nodes a block runs: its slice of the order plus the free nodes it rematerialises."""
    names = sched.order[start:end]
    if end == len(sched.order):
        names = [*names, sched.output]
    wanted = set(names) | free_ancestors(G, sched.free, names)
    return [n for n in gm.graph.nodes if n.name in wanted]


def expect_shapes(tensors: tuple, shapes: tuple, index: int) -> None:
    """A block that baked shape constants runs only on inputs of the shapes it was planned for."""
    got = tuple(tuple(t.shape[1:]) for t in tensors)
    if got != shapes:
        raise SplitFXError(f"block {index} was planned for inputs of shape (B, *{shapes}) and got (B, *{got}): "
                           "it holds shape constants of that size; convert the model again for this input size.")


def expect_constant(value: Any, planned: Any, name: str, index: int) -> None:
    """A value a later block holds as a constant (a shape int) must come out as planned where it is computed."""
    if type(value) is not type(planned) or value != planned:
        raise SplitFXError(f"block {index} computes {name} = {value}, but a later block holds it as the constant "
                           f"{planned} (planned for another input size); convert the model again for this input size.")


def _reads(nodes: list[fx.Node], constants: Mapping[str, Any]) -> dict[fx.Node, Any]:
    """The values of ``constants`` that ``nodes`` read without computing them."""
    inside = set(nodes)
    return {i: constants[i.name] for n in nodes for i in n.all_input_nodes if i.name in constants and i not in inside}


def _literal(graph: fx.Graph, value: Any) -> Any:
    """``value`` as an argument of ``graph``'s nodes: fx writes a ``torch.Size`` as a plain tuple, so a
    node rebuilds it (``x.shape[-2:]`` stays a ``torch.Size`` in the block that reads it baked)."""
    return graph.call_function(torch.Size, (tuple(value),)) if type(value) is torch.Size else value


def shared_constants(blocks: list[list[fx.Node]], baked: Mapping[str, Any]) -> dict[str, Any]:
    """The constants of ``baked`` (``Schedule.baked``: shape ints and the like) that some block reads
    without computing them: what :func:`emit_block` bakes where they are read and checks where they
    are computed."""
    return {n.name: value for nodes in blocks for n, value in _reads(nodes, baked).items()}


def emit_block(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    cut_in: Cut | None,
    cut_out: Cut | None,
    index: int,
    detach_input: bool = True,
    baked: Mapping[str, Any] | None = None,
    detached: Sequence[nn.Parameter] = (),
) -> fx.GraphModule:
    """Block ``index`` running ``nodes`` (see :func:`block_nodes`) between cuts ``cut_in`` and
    ``cut_out`` (``None`` at the model's own inputs and outputs). ``detach_input=False`` gives the
    variant that lets gradient through to the previous block (cascade recipes). ``baked`` holds the
    constants (shape ints and the like) one block computes and another reads
    (:func:`shared_constants`): the block that reads one gets it as a constant and checks that its
    inputs have the shapes it was planned for; the block that computes it checks that it has the
    planned value, so a whole run on another input size fails at the first block even where the
    handed-over shapes alone would not tell (a table built for an H×W grid handed over as H·W tokens).
    The parameters in ``detached`` (:func:`read_detached`) are read detached."""
    by_name = {n.name: n for n in gm.graph.nodes}
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if cut_in is not None:
        handed = []
        for name in cut_in.nodes:
            src = by_name[name]
            x = graph.placeholder(src.name)
            if detach_input:
                x = graph.call_method("detach", (x,))
            if written_in_place(gm, src, nodes):
                x = graph.call_method("clone", (x,))
            env[src] = x
            handed.append(x)
        if cut_in.recompute:
            batch = graph.call_method("size", (handed[cut_in.batch_from], 0))
            for name in cut_in.recompute:
                env[by_name[name]] = batch
        bake = _reads(nodes, baked or {})
        if bake:
            graph.call_function(expect_shapes, (tuple(handed), tuple(s[1:] for s in cut_in.shapes), index))
            env.update({n: _literal(graph, value) for n, value in bake.items()})
    for n in nodes:
        if n.op == "output":
            graph.output(fx.map_arg(n.args[0], env.__getitem__))
        else:
            env[n] = _copy(gm, graph, n, env, detached)
            if baked and n.name in baked:
                graph.call_function(expect_constant, (env[n], _literal(graph, baked[n.name]), n.name, index))
    if cut_out is not None:
        outs = tuple(env[by_name[name]] for name in cut_out.nodes)
        graph.output(outs[0] if cut_out.single else outs)  # one tensor, or a tuple for several
    extras = {name: m for name, m in gm.named_children() if name != "model"}
    return attach(gm.get_submodule("model"), graph, f"Block{index}" if detach_input else f"AttachedBlock{index}",
                  extras)


def emit_blocks(gm: fx.GraphModule, nodes: Sequence[Sequence[fx.Node]], cuts: Sequence[Cut],
                baked: Mapping[str, Any], detach_input: bool = True) -> tuple[fx.GraphModule, ...]:
    """Every block of a split: block k runs ``nodes[k]`` between ``cuts[k-1]`` and ``cuts[k]`` (the
    model's inputs before the first, its outputs after the last), reading detached the parameters an
    earlier block trains; see :func:`emit_block`."""
    ends = [None, *cuts, None]
    detached = read_detached(gm, nodes)
    return tuple(emit_block(gm, list(n), ends[k], ends[k + 1], k, detach_input, baked, detached[k])
                 for k, n in enumerate(nodes))


def without_input_detach(block: fx.GraphModule) -> fx.GraphModule:
    """``block`` letting gradient through to the block that hands it its inputs: the same graph less
    the ``detach`` each input starts with, over the same modules (so a copy of a converted model
    makes its own from its own blocks)."""
    graph = copy.deepcopy(block.graph)
    for node in list(graph.nodes):
        if node.op == "call_method" and node.target == "detach" and node.args[0].op == "placeholder":
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return fx.GraphModule(block, graph, class_name=f"Attached{type(block).__name__}")
