"""Where modules sit in the ordered graph: split points by module name, RepL spans."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import networkx as nx

from ..base.errors import PlanError
from ..passes.cuts import Cut, Schedule
from ..passes.names import inside
from ..passes.node_cost import node_cost


def positions_of(sched: Schedule, G: nx.DiGraph, modules: Sequence[str]) -> list[int]:
    """Order positions of every node inside any of ``modules``."""
    return [i for i, n in enumerate(sched.order) if any(inside(node_cost(G, n).scope, m) for m in modules)]


def split_point_cut(name: str, sched: Schedule, G: nx.DiGraph, model_name: str,
                    unread: Mapping[int, str] = MappingProxyType({}),
                    why: Callable[[int], str] = lambda position: "", found_cuts: Sequence[Cut] = ()) -> int:
    """Index into ``sched.cuts`` of the cut right after module ``name``. Otherwise the error says why:
    ``found_cuts`` are the cuts before the rules and the recipe chose among them (one whose run holds
    the place speaks for it), ``unread`` why the recipe builds no head at such a cut's position, and
    ``why(position)`` what closes a place."""
    found = positions_of(sched, G, [name])
    if not found or not name:
        raise PlanError(f"split point {name!r}: {model_name} has no module of that name in its traced graph.")
    position = found[-1] + 1
    for i, cut in enumerate(sched.cuts):
        if position in cut.run:
            return i
    if position >= len(sched.order):
        raise PlanError(f"split point {name!r}: it is the last module of {model_name}, with nothing after it to "
                        "make a block of")
    place = next((c.position for c in found_cuts if position in c.run), position)
    if place in unread:
        raise PlanError(f"split point {name!r}: {unread[place]}")
    before = [c for c in sched.cuts if c.position < position][-2:]
    after = [c for c in sched.cuts if c.position > position][:2]
    near = [repr(scope) if (scope := node_cost(G, last).scope) else f"node {last} of its forward"
            for last in (sched.order[c.run.start - 1] for c in (*before, *after))]
    reason = why(place)
    raise PlanError(f"split point {name!r}: no cut can follow it in {model_name}{': ' + reason if reason else ''}. "
                    f"The nearest cuts are after {', '.join(dict.fromkeys(near)) or 'no node (it has none)'}.")


def span(sched: Schedule, G: nx.DiGraph, modules: Sequence[str]) -> tuple[int, int]:
    """First and last order position of the nodes of ``modules``; the first moved to the cut whose run
    holds it (a module's first nodes may be a size read that the cut before it follows:
    :attr:`~splitfx.passes.cuts.Cut.run`)."""
    found = positions_of(sched, G, modules)
    return next((c.position for c in sched.cuts if found[0] in c.run), found[0]), found[-1]
