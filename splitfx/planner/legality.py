"""Which cuts the partitioner may use, and which blocks are worth training.

A cut is offered when an aux head can read its tensors (known layouts, the channels placed as the
graph's convolutions, norms and linears say; the batch in dim 0; an integer tensor, such as patch
positions, is handed over unread, but not only such tensors; so is a tensor folding the batch k×,
such as TNT's pixel tokens, where the cut also hands over one that carries the batch itself), it does
not separate a RepL block from the neighbours it is synthesised from, and it does not separate two
uses of one trainable parameter: a parameter used on both sides would get gradient from two losses,
so the span between its first and last use stays in one block (the model's math is unchanged and the
memory prediction stays exact; docs/design.md says why; ``tied="detach"`` drops the rule, later
blocks reading the parameter detached). A block must use at least one trainable parameter, or its
loss would have nothing to train, and the partition's blocks each hold at least one whole layer of
the model's repeated kind (a residual block, a transformer block, an HRNet branch block between
multi-tensor cuts: :func:`~splitfx.passes.units.find_layers`) wherever K such blocks fit, so that
no plan trains a stem convolution or a norm alone behind an aux head larger than it; where they do
not fit the plan says so (``split_points`` may cut anywhere).

Each rule is a function registered in :data:`CUT_RULES` with :func:`cut_rule`; adding one is writing
``@cut_rule("why") def rule(cut, facts) -> bool`` (docs/design.md, "Extending splitfx").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import networkx as nx
import numpy as np
import torch.fx as fx

from ..base.choices import registering
from ..base.errors import PlanError
from ..passes.channels import channels_last_in
from ..passes.cuts import Cut, Schedule
from ..passes.names import unprefix
from ..passes.node_cost import node_cost
from ..passes.partition import additive_cost
from ..passes.replace import Replacement
from ..passes.units import Layer
from ..recipes.base import Recipe
from ..recipes.layout import Layout, infer_layout
from .scopes import span


@dataclass(frozen=True)
class CutFacts:
    """What a cut rule may look at: the cost graph, each cut's tensor layouts (by position), the
    position spans RepL keeps in one block and those of parameters used more than once (by name)."""

    G: nx.DiGraph
    layouts: dict[int, tuple[Layout | None, ...]]
    together: list[tuple[int, int]]
    shared: dict[str, tuple[int, int]]


CutRule = Callable[[Cut, CutFacts], bool]
CUT_RULES: dict[str, CutRule] = {}


def cut_rule(name: str) -> Callable[[CutRule], CutRule]:
    """Register ``rule(cut, facts) -> bool`` (True: the cut may be used) under ``name``; every plan
    made afterwards offers only the cuts every rule allows."""
    return registering(CUT_RULES, name, "cut rule")


@cut_rule("an aux head can read it")
def _readable(cut: Cut, facts: CutFacts) -> bool:
    layouts = facts.layouts[cut.position]
    return None not in layouts and set(layouts) != {Layout.UNREAD}


@cut_rule("every tensor carries the batch in dim 0")
def _batch_first(cut: Cut, facts: CutFacts) -> bool:
    """All of one batch, or all folding T steps in it; or some carry the batch itself, the heads
    reading those alone (TNT's pixel tokens, folded 196×, go along with its patch tokens unread)."""
    costs = [node_cost(facts.G, v) for v in cut.nodes]
    folds = {c.batch_fold for c in costs}
    return all(c.batch_dim0 for c in costs) and (len(folds) == 1 or 1 in folds)


@cut_rule("a RepL block stays with its neighbours")
def _repl_together(cut: Cut, facts: CutFacts) -> bool:
    return not any(lo < cut.position <= hi for lo, hi in facts.together)


@cut_rule("a shared parameter's uses stay in one block")
def _shared_together(cut: Cut, facts: CutFacts) -> bool:
    return not any(lo < cut.position <= hi for lo, hi in facts.shared.values())


def offer_cuts(sched: Schedule, G: nx.DiGraph, replacement: Replacement, shared: dict[str, tuple[int, int]],
               input_hw: tuple[int, int] | None, gm: fx.GraphModule | None = None
               ) -> tuple[Schedule, dict[int, tuple[Layout, ...]], list[str]]:
    """The cuts every rule of :data:`CUT_RULES` allows (see module docstring), leaving ``sched`` as it is.

    Each cut tensor's layout is read from ``gm``'s graph where it says where the channels are
    (:func:`~splitfx.passes.channels.channels_last_in`), else guessed from its shape and ``input_hw``.
    Returns a copy of ``sched`` holding only the offered cuts, the layouts of each offered cut's
    tensors (by cut position) and the shared parameters that cost at least one cut (one every other
    rule allows)."""
    read = {c.position: read_tensors(G, c.nodes) for c in sched.cuts}
    last = channels_last_in(gm, G, set().union(*read.values())) if gm is not None else {}
    layouts = {c.position: tuple(infer_layout(shape, input_hw, last.get(v)) if v in read[c.position] else Layout.UNREAD
                                 for v, shape in zip(c.nodes, c.shapes, strict=True)) for c in sched.cuts}
    facts = CutFacts(G, layouts, [span(sched, G, triple) for triple in replacement.triples], shared)
    others = [rule for rule in CUT_RULES.values() if rule is not _shared_together]
    allowed = [c for c in sched.cuts if all(rule(c, facts) for rule in others)]
    costly = [name for name, (lo, hi) in shared.items() if any(lo < c.position <= hi for c in allowed)]
    offered = [c for c in allowed if _shared_together(c, facts)]
    return (replace(sched, cuts=offered), {c.position: layouts[c.position] for c in offered},
            sorted(unprefix(name) for name in costly))


def read_tensors(G: nx.DiGraph, nodes: Sequence[str]) -> set[str]:
    """Which of a cut's tensors ``nodes`` an aux head reads: the floating ones, and of those only the
    ones carrying the batch itself where any does (a tensor folding it k× is handed over unread)."""
    costs = {v: node_cost(G, v) for v in nodes if _floating(G, v)}
    if any(c.batch_dim0 and c.batch_fold == 1 for c in costs.values()):
        return {v for v, c in costs.items() if c.batch_fold == 1}
    return set(costs)


def _floating(G: nx.DiGraph, name: str) -> bool:
    dtype = node_cost(G, name).dtype
    return dtype is not None and (dtype.is_floating_point or dtype.is_complex)


def trainable_blocks(trainable: list[int], bounds: list[int]) -> np.ndarray:
    """``ok[i, j]``: the block from boundary i to boundary j uses a trainable parameter."""
    return additive_cost(trainable, bounds) > 0


def holds_unit(units: Sequence[Layer], bounds: Sequence[int]) -> np.ndarray:
    """``whole[i, j]``: the block from boundary i to boundary j holds one of ``units`` whole (every
    block does when there are none)."""
    b = np.asarray(bounds)
    if not units:
        return np.ones((len(b), len(b)), dtype=bool)
    starts, ends = np.array([u.start for u in units]), np.array([u.end for u in units])
    order = np.argsort(starts)
    starts, ends = starts[order], ends[order]
    first_end = np.append(np.minimum.accumulate(ends[::-1])[::-1], np.iinfo(np.int64).max)
    earliest = first_end[np.searchsorted(starts, b, side="left")]  # of the units starting at or after i
    return b[None, :] >= earliest[:, None]


def whole_layers(trainable: np.ndarray, whole: np.ndarray, num_blocks: int, model_name: str
                 ) -> tuple[np.ndarray, str | None]:
    """The blocks the partition may choose: those that train something and hold a whole layer
    (:func:`holds_unit`) where ``num_blocks`` such blocks fit; else those that train something, and
    the note the plan shows about it."""
    both = trainable & whole
    most = max_blocks(both)
    if num_blocks <= most:
        return both, None
    return trainable, (f"{model_name} has room for {most} blocks that each hold a whole layer of its repeated "
                       f"kind; with {num_blocks}, some blocks hold less than a layer (ask for {most} or fewer)")


def heads_within_blocks(cost: np.ndarray, backbone: np.ndarray, ranges: Sequence[tuple[int, int, int]],
                        recipe: str, model_name: str) -> tuple[np.ndarray, str | None]:
    """``cost`` with every block whose aux head keeps more saved bytes than the block itself made
    infeasible, where the blocks still fit: ``ranges`` lists (first boundary, last boundary, blocks)
    of each range the partition splits on its own (the whole model, or the spans between fixed
    cuts). Else ``cost`` as it is and the note the plan shows. ``cost[i, j]`` is block i..j with its
    head (the last boundary's: the final loss, not a head), ``backbone[i, j]`` the block alone, both
    with the tensors handed to it.

    A head heavier than its block makes the cut pay for itself twice: the loss keeps more for the
    head than for what it trains, and the min-max answers with tiny blocks behind big heads."""
    with np.errstate(invalid="ignore"):  # inf − inf where a block may not go at all
        fits = ~(cost - backbone > backbone)
    fits[:, -1] = True
    within = np.isfinite(cost) & fits
    # max_blocks answers at least 1 even where no block fits: one block fits where it is within itself
    if all(within[a, b] if k == 1 else k <= max_blocks(within[a:b + 1, a:b + 1]) for a, b, k in ranges):
        return np.where(fits, cost, np.inf), None
    num_blocks = sum(k for _, _, k in ranges)
    most = max_blocks(within)
    where = "" if len(ranges) == 1 else " between the cuts placed first"
    return cost, (f"the aux heads of recipe {recipe!r} keep more saved activations than the blocks they train "
                  f"wherever {model_name} is cut into {num_blocks} blocks{where}; with at most {most} blocks "
                  "every head stays within its block (or place the cuts with split_points)")


def check_saves(recipe: Recipe, num_blocks: int) -> None:
    """Refuse a K at which one of ``recipe``'s losses holds every block (:meth:`Recipe.held`): the
    whole network, E2E's memory with none of its accuracy. Names the smallest K that saves memory."""
    def whole(n: int) -> int | None:
        return next((k for k in range(n) if {h.block for h in recipe.held(k, n)} == set(range(n))), None)

    k = whole(num_blocks) if num_blocks > 1 else None
    if k is not None:
        fewest = next((n for n in range(num_blocks + 1, num_blocks + 64) if whole(n) is None), None)
        ask = f"ask for at least {fewest} blocks, where no loss holds them all" if fewest else "use another recipe"
        raise PlanError(f"recipe {recipe.name!r} with {num_blocks} blocks: its loss {k} runs blocks 0 to "
                        f"{num_blocks - 1} together, the whole network, so the step keeps as much as E2E; {ask}.")


def max_blocks(ok: np.ndarray) -> int:
    """The most blocks a split can have when every block must have something to train."""
    m = ok.shape[0]
    best = np.full(m, -np.inf)
    best[0] = 0
    for j in range(1, m):
        reachable = best[:j][ok[:j, j]]
        best[j] = reachable.max() + 1 if reachable.size else -np.inf
    return int(max(best[-1], 1))


def require_trainable(ok: np.ndarray, path: list[int], model_name: str) -> None:
    """A user-chosen split (split points) whose block has nothing to train is an error."""
    for k, (i, j) in enumerate(pairwise(path)):
        if not ok[i, j]:
            raise PlanError(f"split points give {model_name} a block {k} with no trainable parameter; its loss "
                            "would train nothing. Move or drop the split point around it.")


def mask_untrainable(cost: np.ndarray, ok: np.ndarray, num_blocks: int, model_name: str) -> np.ndarray:
    """``cost`` with the blocks ``ok`` refuses made infeasible; an error if no split is left."""
    if num_blocks > 1 and num_blocks > max_blocks(ok):
        most = max_blocks(ok)
        raise PlanError(
            f"{model_name} can be split into at most {most} blocks that each have a trainable parameter "
            f"(asked for {num_blocks}); a block without one would have nothing to learn.", max_blocks=most)
    return np.where(ok, cost, np.inf)
