"""Where each trainable parameter is used along the ordered graph.

A parameter is used at a position when the module called there holds it, or when a ``get_attr`` of
it feeds that node through free nodes (``alpha.sigmoid()`` is recomputed by every block that needs
it). The planner uses this twice: no cut may separate two uses of one parameter (else two losses
would train it), and no block may be left with nothing to train.
"""
from __future__ import annotations

import networkx as nx
import torch.fx as fx
from torch import nn

from ..base.tensors import node_parameters
from .cuts import Schedule
from .emit import free_ancestors


def parameter_uses(gm: fx.GraphModule, G: nx.DiGraph, sched: Schedule) -> dict[str, list[int]]:
    """Trainable parameter name (as in ``gm``) → the order positions that use it, ascending.

    The output node counts as position ``len(sched.order)``."""
    names = {id(p): name for name, p in gm.named_parameters()}
    by_name = {n.name: n for n in gm.graph.nodes}
    uses: dict[str, list[int]] = {}
    for position, node in enumerate([*sched.order, sched.output]):
        for p in _parameters_at(gm, by_name, G, sched, node):
            if p.requires_grad:
                positions = uses.setdefault(names[id(p)], [])
                if not positions or positions[-1] != position:
                    positions.append(position)
    return uses


def _parameters_at(gm: fx.GraphModule, by_name: dict[str, fx.Node], G: nx.DiGraph, sched: Schedule,
                   node: str) -> list[nn.Parameter]:
    found = node_parameters(gm, by_name[node]) if by_name[node].op == "call_module" else []
    for free in free_ancestors(G, sched.free, [node]):
        found += node_parameters(gm, by_name[free])
    return found


def shared_spans(uses: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """Parameters used at more than one position → (first, last) use: no cut may fall in between."""
    return {name: (ps[0], ps[-1]) for name, ps in uses.items() if ps[-1] > ps[0]}


def trainable_per_position(uses: dict[str, list[int]], gm: fx.GraphModule, positions: int) -> list[int]:
    """Trainable parameter elements used at each order position (a shared one counts at each use)."""
    counts = [0] * positions
    for name, ps in uses.items():
        numel = gm.get_parameter(name).numel()
        for p in ps:
            if p < positions:
                counts[p] += numel
    return counts
