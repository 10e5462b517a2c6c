"""Where each trainable parameter is used along the ordered graph.

A parameter is used at a position when the module called there holds it, or when a ``get_attr`` of
it feeds that node through free nodes (``alpha.sigmoid()`` is recomputed by every block that needs
it). The planner uses this twice: no cut may separate two uses of one parameter (else two losses
would train it), and no block may be left with nothing to train. :class:`Tied` says what a
parameter used in several places does to the cuts: keeps them out (``"together"``), or lets later
blocks read it detached (``"detach"``).
"""
from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import torch.fx as fx
from torch import nn

from ..base.choices import Choice
from ..base.tensors import node_parameters
from .cuts import Schedule
from .emit import block_parameters, free_ancestors, read_detached
from .names import unprefix


class Tied(Choice):
    """What a trainable parameter used in several places (an embedding tied to the output layer, a
    module called twice) does to the cuts between its uses."""

    TOGETHER = "together"  # no cut between its uses: one block trains it, the model's own math
    DETACH = "detach"  # cuts anywhere: the first block using it trains it, later blocks read it detached


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


def planned_uses(uses: dict[str, list[int]], tied: Tied) -> dict[str, list[int]]:
    """The uses the cuts must respect: every one with ``Tied.TOGETHER``; with ``Tied.DETACH`` only the
    first, as only the block holding it trains the parameter (later uses read it detached)."""
    return uses if tied == Tied.TOGETHER else {name: ps[:1] for name, ps in uses.items()}


def aliases(model: nn.Module) -> dict[str, list[str]]:
    """The parameters of ``model`` reached by several names (``lm_head.weight = wte.weight``): the name
    ``named_parameters`` gives → every name, that one first."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {found[0]: found for found in names.values() if len(found) > 1}


def called(name: str, names: dict[str, list[str]]) -> str:
    """Parameter ``name`` and its other names among ``names`` (:func:`aliases`): ``'wte.weight' (also
    'lm_head.weight')``."""
    others = names.get(name, [name])[1:]
    return repr(name) + (f" (also {', '.join(map(repr, others))})" if others else "")


def detached_notes(gm: fx.GraphModule, nodes: Sequence[Sequence[fx.Node]]) -> list[str]:
    """The plan's notes on the parameters one block trains and later blocks read detached
    (``tied="detach"``), each by all its names."""
    names, others = {id(p): unprefix(name) for name, p in gm.named_parameters()}, aliases(gm.model)
    owner = {id(p): k for k in reversed(range(len(nodes))) for p in block_parameters(gm, nodes[k])}
    readers: dict[int, list[int]] = {}
    for k, params in enumerate(read_detached(gm, nodes)):
        for p in params:
            readers.setdefault(id(p), []).append(k)
    return [f"tied='detach': parameter {called(names[i], others)} is trained by block {owner[i]} and read "
            f"detached by block{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))} (no gradient from there)"
            for i, ks in readers.items()]


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
