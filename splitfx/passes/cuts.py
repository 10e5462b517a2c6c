"""Cut discovery: positions in topological order where exactly one tensor value is live.

Parameters, ``get_attr`` constants and anything computed from them alone (``cls_token.expand``,
position-embedding resampling) are *free*: they are rematerialised in whichever block uses them, so
they never cross a cut. Everything else is ordered; a cut after position ``p`` is legal when the
only value produced at or before ``p`` and used after it is a single tensor. A Python int, a shape
or a tuple crossing the cut makes it illegal.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True)
class Cut:
    """A legal boundary: the block ending at ``position`` (exclusive end) hands over ``node``."""

    position: int  # index into Schedule.order of the first node *after* the cut
    node: str  # the single live tensor
    shape: tuple
    recompute: tuple[str, ...] = ()  # batch-size ints crossing the cut, rebuilt as node.size(0)


@dataclass
class Schedule:
    """Ordered (non-free) nodes, free nodes, and every legal cut."""

    order: list[str]
    free: set[str]
    cuts: list[Cut]
    output: str


def schedule(G: nx.DiGraph) -> Schedule:
    """Order the cost graph's nodes and find its legal cuts (see module docstring).

    Batch-size ints (``B = x.shape[0]`` at the top of a forward) do not block a cut when the cut
    tensor carries the batch in dim 0: the next block recomputes them from it."""
    topo = list(G.nodes)  # insertion order is fx order, already topological
    placeholders = [n for n in topo if G.nodes[n]["op"] == "placeholder"]
    output = next(n for n in topo if G.nodes[n]["op"] == "output")
    reach = set(placeholders)
    for p in placeholders:
        reach |= nx.descendants(G, p)
    free = {n for n in topo if n not in reach}
    order = [n for n in topo if n in reach and n != output]
    pos = {n: i for i, n in enumerate(order)}
    end = len(order)

    expire: dict[int, list[str]] = {}
    for n in order:
        users = [pos.get(u, end) for u in G.successors(n) if u not in free]
        if users:
            expire.setdefault(max(users), []).append(n)

    cuts: list[Cut] = []
    live: set[str] = set()
    used = {n for names in expire.values() for n in names}
    for p, n in enumerate(order[:-1]):
        if n in used:
            live.add(n)
        live.difference_update(expire.pop(p, ()))
        batch_ints = tuple(sorted(v for v in live if G.nodes[v]["batch_int"]))
        rest = [v for v in live if not G.nodes[v]["batch_int"]]
        if len(rest) != 1:
            continue
        (node,) = rest
        attrs = G.nodes[node]
        if not attrs["is_tensor"] or attrs["op"] == "placeholder":
            continue
        if batch_ints and not attrs["batch_dim0"]:
            continue
        cut = Cut(p + 1, node, attrs["shape"], batch_ints)
        if cuts and cuts[-1].node == node:
            cuts[-1] = cut  # nothing passed on in between: keep one cut per handed-over tensor
        else:
            cuts.append(cut)
    return Schedule(order, free, cuts, output)
