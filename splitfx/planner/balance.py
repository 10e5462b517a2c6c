"""Choosing the blocks: the cost matrix of each balancing method, and the partition over it.

``memory`` counts what a step keeps alive: the block's saved activations, its aux head and loss,
and the tensors handed to it that it does not save itself (several, at a multi-tensor cut); where a
recipe's loss holds more than its own block (:meth:`~splitfx.recipes.base.Recipe.held`: a cascade
runs block k−1 again), the partition balances that sum (:mod:`splitfx.passes.chain_partition`).
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import networkx as nx
import numpy as np

from ..base.choices import Choice
from ..base.meter import storage_bytes, storage_key
from ..passes.aux_cost import AuxCost
from ..passes.chain_partition import Transition, chain_partition
from ..passes.cost import Probe
from ..passes.cuts import Schedule
from ..passes.node_cost import node_cost
from ..passes.partition import additive_cost, min_max_partition, storage_cost
from ..recipes.base import Held, Recipe
from .legality import heads_within_blocks, mask_untrainable


class Method(Choice):
    """What the blocks are balanced by: saved activations (aux head included), forward FLOPs,
    parameter bytes, or the number of ops."""

    MEMORY = "memory"
    FLOPS = "flops"
    PARAMS = "params"
    UNIFORM = "uniform"


def held_tensors(probe: Probe, sched: Schedule) -> list[dict[int, int]]:
    """Per boundary (start, every cut, end): storage key → bytes of the tensors handed over there."""
    held = [{storage_key(probe.values[v]): storage_bytes(probe.values[v]) for v in c.nodes} for c in sched.cuts]
    return [{}, *held, {}]


def chain_steps(recipe: Recipe, num_blocks: int, with_aux: np.ndarray, backbone: np.ndarray,
                legal: np.ndarray) -> list[Transition] | None:
    """The cost of placing each block under ``recipe``'s losses (:meth:`Recipe.held`), each loss
    charged where its last block is placed; None when every loss holds its own block alone (then
    the one-block partition is exact)."""
    held = [recipe.held(k, num_blocks) for k in range(num_blocks)]
    if all(parts == (Held(k),) for k, parts in enumerate(held)):
        return None
    zero = np.zeros_like(with_aux)
    alone, pairs = [zero.copy() for _ in range(num_blocks)], [None] * num_blocks
    for k, parts in enumerate(held):
        last = max(p.block for p in parts)
        if any(p.block not in (last, last - 1) for p in parts):
            raise ValueError(f"recipe {recipe.name!r}: loss {k} holds blocks further apart than two neighbours")
        terms = {b: sum((p.times * (with_aux if p.head else backbone) for p in parts if p.block == b), zero)
                 for b in (last, last - 1)}
        if not any(p.block == last - 1 for p in parts):
            alone[last] = np.maximum(alone[last], terms[last])
        elif pairs[last] is None:
            pairs[last] = (terms[last], terms[last - 1])
        else:
            raise ValueError(f"recipe {recipe.name!r}: two losses hold blocks {last - 1} and {last} together")
    return [Transition(np.where(legal, a, np.inf), None if p is None else np.where(legal, p[0], np.inf),
                       None if p is None else p[1]) for a, p in zip(alone, pairs, strict=True)]


def choose_path(
    method: Method,
    recipe: Recipe,
    num_blocks: int,
    probe: Probe,
    sched: Schedule,
    aux_costs: Sequence[AuxCost],
    final_loss: dict[int, int],
    ok: np.ndarray,
    tolerance: float,
    model_name: str,
    fixed: Sequence[int] = (),
) -> tuple[list[int], str | None]:
    """Boundary indices ``[0, ..., M-1]`` of the chosen split (see :mod:`splitfx.passes.partition`),
    and a note when no split keeps every aux head within its block (balancing by memory, a head
    heavier than its block is refused: :func:`~.legality.heads_within_blocks`). Boundaries ``fixed``
    (pipeline stage boundaries placed by time) are kept, and the blocks are balanced within each range
    between them, ``num_blocks`` shared out evenly (earlier ranges first)."""
    G: nx.DiGraph = probe.graph
    order = sched.order
    bounds = [0, *(c.position for c in sched.cuts), len(order)]
    costs = [node_cost(G, v) for v in order]
    saves = [c.saved for c in costs]

    def cost() -> np.ndarray:
        if method is Method.MEMORY:
            return storage_cost(saves, G.graph["storages"], bounds, [{}, *(a.saves for a in aux_costs), final_loss],
                                held_tensors(probe, sched))
        if method is Method.FLOPS:
            flops = additive_cost([c.flops for c in costs], bounds)
            return flops + np.asarray([0, *(a.flops for a in aux_costs), 0], dtype=float)[None, :]
        if method is Method.PARAMS:
            return additive_cost([c.param_bytes for c in costs], bounds)
        return additive_cost([c.op.startswith("call") for c in costs], bounds)

    weights = [0, *(sum(node_cost(G, v).out_bytes for v in c.nodes) for c in sched.cuts), 0]
    handover = [1, *(len(c.nodes) for c in sched.cuts), 1]
    masked = mask_untrainable(cost(), ok, num_blocks, model_name)
    edges = [0, *fixed, len(bounds) - 1]
    n = len(edges) - 1
    ranges = [(a, b, num_blocks // n + (s < num_blocks % n)) for s, (a, b) in enumerate(pairwise(edges))]
    note = None
    if method is Method.MEMORY:
        backbone = storage_cost(saves, G.graph["storages"], bounds, None, held_tensors(probe, sched))
        masked, note = heads_within_blocks(masked, backbone, ranges, recipe.name, model_name)
        steps = chain_steps(recipe, num_blocks, masked, backbone, np.isfinite(masked))
        if steps is not None:
            if fixed:
                raise ValueError(f"recipe {recipe.name!r} holds two blocks per loss and cannot be split between stages")
            return [0, *chain_partition(steps, weights, handover)[0], len(bounds) - 1], note
    path = [0]
    for a, b, k in ranges:
        inner = min_max_partition(masked[a:b + 1, a:b + 1], k, weights[a:b + 1], handover[a:b + 1], tolerance)
        path += [a + i for i in inner] + [b]
    return path, note
