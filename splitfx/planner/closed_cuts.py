"""Why a model has few legal cuts: what closes the places between its ops where no cut is offered.

:func:`why_closed` walks the ordered graph (``Schedule.order``) and, at every place that is not an
offered cut, finds what closes it by the rules that decide cuts (:mod:`splitfx.passes.cuts` and
:data:`~splitfx.planner.legality.CUT_RULES`):

* a value live across the place that is not a tensor and changes with the batch (``s = x.shape``
  read at the top and used at the end: a ``torch.Size``), or a batch-size int no tensor carries;
* a trainable parameter used on both sides (a tied or shared weight), named by all its names, with
  ``tied="detach"`` as what opens those places;
* a live tensor a cut rule refuses (no aux head can read it, the batch not in dim 0), a RepL block
  kept with its neighbours, or any other registered rule;
* more tensors live at once than ``max_cut_tensors`` allows (named by the longest-lived one).

Each reason names its node (what it computes and in which module) and counts the places it closes,
with the modules after which a user would expect a cut among them; reasons alike (one op in modules
of one class, parameters of modules of one class) share a line.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import torch
import torch.fx as fx

from ..passes.cuts import Cut, Schedule
from ..passes.names import inside, unprefix
from ..passes.node_cost import node_cost
from ..passes.sharing import aliases, called, shared_spans
from ..recipes.layout import Layout, infer_layout
from .legality import CUT_RULES, CutFacts, _repl_together, _shared_together, read_tensors
from .scopes import span

Blame = tuple[str, ...]  # (kind, subject[, rule]): one reason that closes a place


@dataclass(frozen=True)
class _Graph:
    """What the explanation reads: the bound graph's nodes, the cost graph, the schedule, the
    parameters used more than once, the positions of the first and the last parameter use, the
    parameters' other names, the RepL spans, and the input's spatial size (for layouts)."""

    nodes: dict[str, fx.Node]
    G: nx.DiGraph
    sched: Schedule
    shared: dict[str, tuple[int, int]]
    reach: tuple[int, int]
    aliases: dict[str, list[str]]
    repl: dict[tuple[int, int], tuple[str, ...]]
    input_hw: tuple[int, int] | None
    model: str

    def facts(self, position: int, tensors: Sequence[str]) -> CutFacts:
        """The rules' view of a cut handing over ``tensors`` at ``position``."""
        read = read_tensors(self.G, tensors)
        layouts = tuple(infer_layout(node_cost(self.G, v).shape, self.input_hw) if v in read else Layout.UNREAD
                        for v in tensors)
        return CutFacts(self.G, {position: layouts}, list(self.repl), self.shared)


def frontiers(G: nx.DiGraph, sched: Schedule) -> dict[int, list[str]]:
    """Cut position → the non-free values produced before it and used at or after it, oldest first
    (the frontier :func:`splitfx.passes.cuts.schedule` tests there)."""
    pos = {n: i for i, n in enumerate(sched.order)}
    end = len(sched.order)
    last = {}
    for n in sched.order:
        users = [pos.get(u, end) for u in G.successors(n) if u not in sched.free]
        if users:
            last[n] = max(users)
    found, live = {}, []
    for q in range(1, end):
        live = [v for v in (*live, sched.order[q - 1]) if last.get(v, -1) >= q]
        found[q] = live
    return found


def _handed_over(G: nx.DiGraph, live: list[str]) -> tuple[str, ...]:
    """What a cut with frontier ``live`` would hand over: all but batch-size ints and static constants."""
    return tuple(v for v in live if not (node_cost(G, v).batch_int or node_cost(G, v).static))


def _blames(g: _Graph, q: int, live: list[str]) -> list[Blame]:
    """What closes the place before ``sched.order[q]`` whose frontier is ``live`` ([]: nothing to say)."""
    costs = {v: node_cost(g.G, v) for v in live}
    values = [v for v in live if not (costs[v].batch_int or costs[v].static or costs[v].is_tensor)]
    if values:
        return [("value", v) for v in values if not _unpacking(g, q, v)]
    tensors = list(_handed_over(g.G, live))
    if not tensors or all(costs[v].op == "placeholder" for v in tensors):
        return []  # nothing computed yet
    carriers = [v for v in tensors if costs[v].batch_dim0 and costs[v].batch_fold == 1]
    if any(costs[v].batch_int for v in live) and not carriers:
        return [("batch", v) for v in live if costs[v].batch_int]
    blames = _rule_blames(g, q, tensors)
    return blames or ([("wide", tensors[0])] if len(tensors) > 1 else [])


def _unpacking(g: _Graph, q: int, v: str) -> bool:
    """Whether the place before ``sched.order[q]`` is inside the unpacking of ``v`` (``B, T, C = x.size()``,
    ``q, k, v = qkv.split(C, 2)``): every node from there to ``v``'s last reader reads ``v``, so no one
    would cut there."""
    readers = set(g.G.successors(v)) - g.sched.free
    rest = [*g.sched.order[q:], g.sched.output]
    last = max((i for i, n in enumerate(rest) if n in readers), default=-1)
    return all(n in readers for n in rest[:last + 1])


def _rule_blames(g: _Graph, q: int, tensors: list[str]) -> list[Blame]:
    """The cut rules that refuse handing over ``tensors`` at ``q``, each by the parameter, RepL block or
    tensor it refuses (a tensor when the rule refuses it handed over alone)."""
    blames: list[Blame] = []
    for name, rule in CUT_RULES.items():
        if rule(_cut(g, q, tensors), g.facts(q, tensors)):
            continue
        if rule is _shared_together:
            blames += [("param", p) for p, (lo, hi) in g.shared.items() if lo < q <= hi]
        elif rule is _repl_together:
            blames += [("repl", *g.repl[s]) for s in g.repl if s[0] < q <= s[1]]
        else:
            alone = [("tensor", v, name) for v in tensors if not rule(_cut(g, q, [v]), g.facts(q, [v]))]
            blames += alone or [("rule", name)]
    return blames


def _cut(g: _Graph, q: int, tensors: Sequence[str]) -> Cut:
    """A cut at ``q`` handing over ``tensors``, as a rule sees it."""
    return Cut(q, tuple(tensors), tuple(tuple(node_cost(g.G, v).shape or ()) for v in tensors))


def _code(node: fx.Node) -> str:
    """What ``node`` computes, in the model's terms (``x.shape``, ``size[0]``, ``self.fc(...)``)."""
    args = [a.name if isinstance(a, fx.Node) else repr(a) for a in node.args]
    if node.op == "call_function" and node.target is getattr:
        return f"{args[0]}.{node.args[1]}"
    if node.op == "call_function" and node.target is operator.getitem:
        return f"{args[0]}[{args[1]}]"
    if node.op == "call_method":
        return f"{args[0]}.{node.target}({', '.join(args[1:])})"
    if node.op in ("call_module", "get_attr"):
        return f"self.{unprefix(str(node.target))}" + ("(...)" if node.op == "call_module" else "")
    return f"{getattr(node.target, '__name__', node.target)}({', '.join(args)})"


def _reads_shape(g: _Graph, node: fx.Node) -> bool:
    """Whether ``node`` is a shape read (``x.shape``, ``x.size()``) or a non-tensor computed from one."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] == "shape"
    if node.op == "call_method" and node.target == "size":
        return True
    inputs = [a for a in node.all_input_nodes if a.name in g.G and not node_cost(g.G, a.name).is_tensor]
    return node.op == "call_function" and any(_reads_shape(g, a) for a in inputs)


def _name(g: _Graph, v: str) -> str:
    """``v`` as a user finds it: the code that computes it and the module it runs in."""
    cost, node = node_cost(g.G, v), g.nodes[v]
    if node.op == "placeholder":
        return f"the input `{v}`"
    if node.op == "output":
        return f"{g.model}'s output"
    where = f"module '{unprefix(cost.scope)}' ({cost.cls})" if cost.scope else f"{g.model}'s forward"
    return f"`{_code(node)}` (node {v}) in {where}"


def _until(g: _Graph, v: str) -> str:
    """The last user of ``v`` along the order."""
    pos = {n: i for i, n in enumerate(g.sched.order)}
    users = [u for u in g.G.successors(v) if u not in g.sched.free]
    return _name(g, max(users, key=lambda u: pos.get(u, len(pos))))


def _node_at(g: _Graph, position: int) -> str:
    """The node at ``position`` of the order (the output past its end, as parameter uses count it)."""
    order = g.sched.order
    return order[position] if position < len(order) else g.sched.output


def _describe(g: _Graph, blame: Blame) -> str:
    """One reason, with what to do about it."""
    kind, subject = blame[0], blame[1]
    if kind == "param":
        first, last = (_name(g, _node_at(g, p)) for p in g.shared[subject])
        ends = ", the first and the last use of any parameter" if g.shared[subject] == g.reach else ""
        return (f"parameter {called(unprefix(subject), g.aliases)} is used by {first} and again by {last}{ends}: a "
                "cut between two uses would let two losses train it, so they stay in one block (pass "
                "tied=\"detach\", --tied detach on the command line, to cut between them: the block of the first "
                "use trains it, later blocks read it detached and give it no gradient; or give each use its own "
                "parameter)")
    if kind == "repl":
        return f"RepL keeps the replaced block with the neighbours it is synthesised from ({', '.join(blame[1:])})"
    if kind == "rule":
        return f"the cut rule \"{subject}\" refuses them"
    alive = f"{_name(g, subject)} is live until {_until(g, subject)} reads it"
    if kind == "value" and _reads_shape(g, g.nodes[subject]):
        return (f"{alive}; a shape read that changes with the batch is not a tensor, so no cut can hand it over "
                "(unpack it where it is read, `B, C, H, W = x.shape`: a cut recomputes the batch size and holds the "
                "other sizes as constants; or read the shape where it is used, from a tensor live there)")
    if kind == "value":
        return (f"{alive}; it is not a tensor, nor a constant the batch leaves alone, so no cut can hand it over "
                "(compute it where it is used)")
    if kind == "batch":
        return f"{alive}; it is the batch size, and no tensor live with it carries the batch in dim 0"
    if kind == "tensor":
        shape = list(node_cost(g.G, subject).shape or ())
        return f"{alive}, a tensor of shape {shape} that fails the cut rule \"{blame[2]}\""
    return (f"more tensors are live at once than max_cut_tensors allows (pass a larger one, or None); the "
            f"longest-lived: {alive}")


def _after(g: _Graph, q: int) -> str | None:
    """The outermost module that ends right before place ``q``: where a user would expect a cut."""
    here, there = (unprefix(node_cost(g.G, g.sched.order[i]).scope) for i in (q - 1, q))
    parts = here.split(".") if here else []
    ending = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return next((m for m in ending if not inside(there, m)), None)


def _examples(g: _Graph, places: list[int], most: int = 3) -> str:
    """Up to ``most`` modules after which a cut is closed, outermost first."""
    names = {m: q for q in reversed(places) if (m := _after(g, q)) is not None}
    chosen = sorted(names, key=lambda m: (m.count("."), names[m]))[:most]
    return f", e.g. after {', '.join(repr(m) for m in chosen)}" if chosen else ""


def _key(g: _Graph, blame: Blame) -> tuple:
    """Reasons alike share a key and a line: the same op in modules of one class, parameters of modules
    of one class, too many tensors anywhere."""
    kind, subject = blame[0], blame[1]
    if kind == "param":
        return kind, node_cost(g.G, _node_at(g, g.shared[subject][0])).cls
    if kind in ("value", "tensor", "batch"):
        cost = node_cost(g.G, subject)
        return kind, cost.op, "" if cost.op == "call_module" else cost.target, cost.cls, *blame[2:]
    return (kind,) if kind == "wide" else blame


def _label(g: _Graph, blame: Blame) -> str:
    """A short name for one of several reasons alike: the parameter, or the module of the node."""
    if blame[0] == "param":
        return repr(unprefix(blame[1]))
    scope = node_cost(g.G, blame[1]).scope
    return repr(unprefix(scope)) if scope else f"node {blame[1]}"


def _line(g: _Graph, members: list[Blame], closes: dict[Blame, set[int]], total: int) -> str:
    """One line for reasons alike: the one closing most places, the others by name, the places closed."""
    places = sorted(set().union(*(closes[b] for b in members)))
    others = list(dict.fromkeys(_label(g, b) for b in members[1:]))
    named = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    also = f"; the same for {len(members) - 1} more ({named})" if others else ""
    return f"- {_describe(g, members[0])}{also}: closes {len(places)} of {total} places{_examples(g, places)}."


def _graph(gm: fx.GraphModule, G: nx.DiGraph, sched: Schedule, uses: dict[str, list[int]],
           triples: Sequence[tuple[str, ...]], inputs: Sequence[torch.Tensor], model_name: str) -> _Graph:
    input_hw = tuple(inputs[0].shape[-2:]) if inputs[0].dim() == 4 else None
    used = [p for ps in uses.values() for p in ps]
    return _Graph({n.name: n for n in gm.graph.nodes}, G, sched, shared_spans(uses), (min(used, default=0),
                  max(used, default=0)), aliases(gm.model), {span(sched, G, t): tuple(t) for t in triples}, input_hw,
                  model_name)


def why_not_at(position: int, gm: fx.GraphModule, G: nx.DiGraph, sched: Schedule, uses: dict[str, list[int]],
               triples: Sequence[tuple[str, ...]], inputs: Sequence[torch.Tensor], model_name: str) -> str:
    """What closes the one place before ``sched.order[position]`` (right after a split point that is
    no cut), each reason with what to do about it."""
    g = _graph(gm, G, sched, uses, triples, inputs, model_name)
    blames = _blames(g, position, frontiers(G, sched).get(position, []))
    return "; ".join(_describe(g, b) for b in blames) or "nothing is computed before it"


def why_closed(gm: fx.GraphModule, G: nx.DiGraph, sched: Schedule, uses: dict[str, list[int]],
               triples: Sequence[tuple[str, ...]], inputs: Sequence[torch.Tensor], model_name: str,
               most: int = 3) -> str:
    """Lines saying what closes the places between the model's nodes that are not among ``sched.cuts``
    (``uses``: each trainable parameter's positions; ``triples``: the RepL blocks with their neighbours):
    the ``most`` kinds of reason that close the most places, each with the places it closes."""
    g = _graph(gm, G, sched, uses, triples, inputs, model_name)
    live_at = frontiers(G, sched)
    offered = {c.nodes for c in sched.cuts}  # a place handing over what a cut does is that cut
    closes: dict[Blame, set[int]] = {}
    for q, live in live_at.items():
        if _handed_over(G, live) not in offered:
            for blame in _blames(g, q, live):
                closes.setdefault(blame, set()).add(q)
    if not closes:
        return f"Every place between two of its {len(sched.order)} nodes where a tensor can be handed over is a cut."
    groups: dict[tuple, list[Blame]] = {}
    for blame in sorted(closes, key=lambda b: -len(closes[b])):
        groups.setdefault(_key(g, blame), []).append(blame)
    ranked = sorted(groups.values(), key=lambda members: -len(set().union(*(closes[b] for b in members))))
    lines = [f"What closes the other places between its {len(sched.order)} nodes:"]
    lines += [_line(g, members, closes, len(live_at)) for members in ranked[:most]]
    if len(ranked) > most:
        lines.append(f"- and {len(ranked) - most} more reasons.")
    return "\n".join(lines)
