"""Bind an fx graph to the user's model so that every attribute is looked up live.

A plain ``fx.GraphModule(model, graph)`` copies references to the attributes it uses; after
``model.to(device)`` or ``load_state_dict(assign=True)`` those references go stale. Here every
``get_attr``/``call_module`` target is prefixed with ``model.`` and the GraphModule's ``model``
attribute *is* the user's module, so blocks, the full graph and the user's model always share state.
"""
from __future__ import annotations

import torch.fx as fx
from torch import nn

from .names import PREFIX


def bind(model: nn.Module, graph: fx.Graph, class_name: str = "GraphModule") -> fx.GraphModule:
    """Return a GraphModule running ``graph`` against ``model``'s own submodules and tensors.

    ``graph`` uses targets relative to ``model`` (as the tracer produces them)."""
    bound = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = bound.graph_copy(graph, env)
    bound.output(out).meta.update(graph.output_node().meta)
    for node in bound.nodes:
        if node.op in ("get_attr", "call_module"):
            node.target = PREFIX + node.target
    return attach(model, bound, class_name)


def attach(model: nn.Module, graph: fx.Graph, class_name: str = "GraphModule",
           extras: dict[str, nn.Module] | None = None) -> fx.GraphModule:
    """GraphModule over a graph whose targets already carry the ``model.`` prefix.

    ``extras`` are further modules the graph calls by their own prefix (RepL surrogates: ``repl.``)."""
    holder = nn.Module()
    holder.model = model
    for name, module in (extras or {}).items():
        holder.add_module(name, module)
    gm = fx.GraphModule(holder, graph, class_name)
    gm.model = model
    for name, module in (extras or {}).items():
        setattr(gm, name, module)
    return gm

