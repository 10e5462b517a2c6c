"""Cut discovery: positions in topological order where every live value can be handed over.

Parameters, ``get_attr`` constants and anything computed from them and the inputs' shape ints alone
(``cls_token.expand``, position-embedding resampling, a rotary embedding built for the patch grid)
are *free*: they are rematerialised in whichever block uses them, so they never cross a cut. A random
draw is never free (each block would draw its own), unless it is a train-only call, which a step
replays (``passes/replay.py``).
Everything else is ordered; the *frontier* after position ``p`` is every value produced at or before
``p`` and used after it. A cut there is legal when the frontier is made of tensors (at most
``max_tensors`` of them, and not only the model's inputs), plus ints equal to the batch size when one
of those tensors carries the batch in dim 0 (the next block recomputes them), plus plain constants
the batch size does not change (swin's shape ints ``B, H, W, C = x.shape``, mvitv2's feature size
``[H, W]``, deeplabv3's ``x.shape[-2:]``, naflexvit's attention mask that is None for a dense image;
never a dtype or device). A block that reads one it does not compute gets it as a constant
(``Schedule.baked``), guarded by a check of its inputs' shapes and of its value where it is
computed. Any other value crossing the cut (an int the batch changes, a dtype, a whole ``x.shape``,
which holds the batch, a tuple holding a tensor) makes it illegal.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from .node_cost import node_cost


@dataclass(frozen=True)
class Cut:
    """A legal boundary: the block ending at ``position`` (exclusive end) hands over ``nodes``."""

    position: int  # index into Schedule.order of the first node *after* the cut
    nodes: tuple[str, ...]  # the live tensors handed over, in the order they were produced
    shapes: tuple[tuple[int, ...], ...]
    recompute: tuple[str, ...] = ()  # batch-size ints crossing the cut, rebuilt as nodes[batch_from].size(0)
    batch_from: int = 0  # which handed-over tensor carries the batch in dim 0
    since: int | None = None  # the first legal position handing over these same nodes (None: position)

    @property
    def run(self) -> range:
        """From the first legal position handing over these nodes to ``position``, the last (kept as
        the cut): nothing computed in between is handed on, only read (the next layer reading its
        input's size), so a layer ending or starting anywhere in the run is bounded by this cut."""
        return range(self.position if self.since is None else self.since, self.position + 1)

    @property
    def single(self) -> bool:
        """Whether exactly one tensor is handed over."""
        return len(self.nodes) == 1


@dataclass
class Schedule:
    """Ordered (non-free) nodes, free nodes, every legal cut, and the static constants by value."""

    order: list[str]
    free: set[str]
    cuts: list[Cut]
    output: str
    baked: dict[str, Any] = field(default_factory=dict)  # constants the batch does not change, by value


def schedule(G: nx.DiGraph, max_tensors: int | None = 1) -> Schedule:
    """Order the cost graph's nodes and find its legal cuts (see module docstring).

    ``max_tensors`` bounds the tensors one cut may hand over (None: no bound)."""
    topo = list(G.nodes)  # insertion order is fx order, already topological
    placeholders = [n for n in topo if node_cost(G, n).op == "placeholder"]
    output = next(n for n in topo if node_cost(G, n).op == "output")
    static = {n for n in topo if node_cost(G, n).static}
    reach = _reached(G, placeholders, static)
    free = {n for n in topo if n not in reach}
    baked = {s: node_cost(G, s).value for s in static & reach}
    order = [n for n in topo if n in reach and n != output]
    pos = {n: i for i, n in enumerate(order)}
    end = len(order)

    expire: dict[int, list[str]] = {}
    for n in order:
        users = [pos.get(u, end) for u in G.successors(n) if u not in free]
        if users:
            expire.setdefault(max(users), []).append(n)

    cuts: list[Cut] = []
    live: dict[str, None] = {}  # insertion-ordered: the order values were produced
    used = {n for names in expire.values() for n in names}
    for p, n in enumerate(order[:-1]):
        if n in used:
            live[n] = None
        for gone in expire.pop(p, ()):
            live.pop(gone, None)
        cut = _cut(G, p + 1, list(live), max_tensors)
        if cut is None:
            continue
        if cuts and cuts[-1].nodes == cut.nodes:  # nothing passed on in between: one cut per frontier
            cuts[-1] = replace(cut, since=cuts[-1].run.start)
        else:
            cuts.append(cut)
    return Schedule(order, free, cuts, output, baked)


def _reached(G: nx.DiGraph, placeholders: list[str], static: set[str]) -> set[str]:
    """Nodes reached from the inputs or from a random draw other than through shape ints only: a
    value computed from the inputs' shapes alone (a rotary embedding built for the patch grid's
    ``H, W``) is free, unless it is drawn at random (``torch.rand``: each block would draw its own; a
    train-only call, which a step replays, stays free: ``passes/replay.py``)."""
    sources = [*placeholders, *(n for n in G.nodes if node_cost(G, n).random)]
    reach = set(sources)
    stack = list(sources)
    while stack:
        for succ in G.successors(stack.pop()):
            if succ not in reach:
                reach.add(succ)
                if succ not in static:
                    stack.append(succ)
    return reach


def _cut(G: nx.DiGraph, position: int, live: list[str], max_tensors: int | None) -> Cut | None:
    """The cut at ``position`` with frontier ``live``, or None if it cannot be handed over."""
    costs = {v: node_cost(G, v) for v in live}
    batch_ints = tuple(sorted(v for v in live if costs[v].batch_int))
    tensors = [v for v in live if not (costs[v].batch_int or costs[v].static)]
    if not tensors or any(not costs[v].is_tensor for v in tensors):
        return None
    if all(costs[v].op == "placeholder" for v in tensors):
        return None  # nothing computed yet
    if max_tensors is not None and len(tensors) > max_tensors:
        return None
    carriers = [i for i, v in enumerate(tensors) if costs[v].batch_dim0 and costs[v].batch_fold == 1]
    if batch_ints and not carriers:
        return None
    shapes = tuple(tuple(costs[v].shape) for v in tensors)
    return Cut(position, tuple(tensors), shapes, batch_ints, carriers[0] if carriers else 0)
