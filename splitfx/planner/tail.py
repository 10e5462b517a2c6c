"""The model's own task head, found in its graph: what runs after its last repeated layer.

GLCAN's global branch is "a copy of the model's own task head, trained with the real task loss"
(``../shared/METHODS.md``): a classifier's pool and Linear, a segmentation net's classifier and
upsampling, a super-resolution net's upsampler and last conv, a language model's final norm and LM
head. The tail starts at the first legal one-tensor cut at or after the end of the model's last
repeated layer (:meth:`~splitfx.recipes.base.GraphInfo.repeated`; in a model whose global skip hides
its layers, EDSR's, the last one-tensor cut of the shape most cuts hand over) whose tensor a head can
read and after which a trainable parameter is used; it runs to the output. Each :meth:`Tail.build` is a fresh
copy of those nodes holding copies of the modules and tensors they use (nothing else of the model).
"""
from __future__ import annotations

import copy

import networkx as nx
import torch.fx as fx
from torch import nn

from ..passes.cuts import Schedule
from ..passes.emit import block_nodes, block_parameters, emit_block, shared_constants
from ..recipes.base import GraphInfo, Tail
from ..recipes.layout import Layout


def copied(block: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule running ``block``'s graph on copies of only the modules and tensors it reads."""
    targets = {n.target for n in block.graph.nodes if n.op in ("get_attr", "call_module")}
    root = {t: copy.deepcopy(block.get_submodule(t) if _is_module(block, t) else _attr(block, t)) for t in targets}
    graph = fx.Graph()
    graph.output(graph.graph_copy(block.graph, {}))
    return fx.GraphModule(root, graph, "Tail")


def _attr(root: nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)


def _is_module(root: nn.Module, target: str) -> bool:
    return isinstance(_attr(root, target), nn.Module)


def _trunk_end(sched: Schedule, graph: GraphInfo) -> int:
    """Where the model's trunk ends: after its last repeated layer; in a graph with none (a global
    skip around every block hides them: EDSR), at the last one-tensor cut of the shape most cuts hand
    over."""
    repeated = graph.repeated()
    if repeated:
        return repeated[-1].end
    shapes = [c.shapes[0] for c in sched.cuts if c.single]
    trunk = max(set(shapes), key=shapes.count, default=None)
    return max((c.position for c in sched.cuts if c.single and c.shapes[0] == trunk), default=len(sched.order))


def find_tail(gm: fx.GraphModule, G: nx.DiGraph, sched: Schedule, layouts: dict, graph: GraphInfo) -> Tail | None:
    """The model's task head after its trunk (module docstring), or None."""
    end = _trunk_end(sched, graph)
    for cut in sched.cuts:
        layout = layouts[cut.position][0]
        if cut.position < end or not cut.single or layout == Layout.UNREAD:
            continue
        head = block_nodes(gm, G, sched, cut.position, len(sched.order))
        if not any(p.requires_grad for p in block_parameters(gm, head)):
            continue
        body = block_nodes(gm, G, sched, 0, cut.position)
        baked = shared_constants([body, head], sched.baked)
        block = emit_block(gm, head, cut, None, 0, detach_input=False, baked=baked)
        return Tail(cut.shapes[0], layout, lambda block=block: copied(block))
    return None
