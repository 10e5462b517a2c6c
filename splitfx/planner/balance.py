"""Choosing the blocks: the cost matrix of each balancing method, and the partition over it.

``memory`` counts what a step keeps alive: the block's saved activations, its aux head and loss,
and the tensors handed to it that it does not save itself (several, at a multi-tensor cut).
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import networkx as nx
import numpy as np

from ..base.choices import Choice
from ..base.meter import storage_bytes, storage_key
from ..passes.aux_cost import AuxCost
from ..passes.cost import Probe
from ..passes.cuts import Schedule
from ..passes.node_cost import node_cost
from ..passes.partition import additive_cost, min_max_partition, storage_cost
from .legality import mask_untrainable


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


def choose_path(
    method: Method,
    num_blocks: int,
    probe: Probe,
    sched: Schedule,
    aux_costs: Sequence[AuxCost],
    final_loss: dict[int, int],
    ok: np.ndarray,
    tolerance: float,
    model_name: str,
    fixed: Sequence[int] = (),
) -> list[int]:
    """Boundary indices ``[0, ..., M-1]`` of the chosen split (see :mod:`splitfx.passes.partition`).
    Boundaries ``fixed`` (pipeline stage boundaries placed by time) are kept, and the blocks are
    balanced within each range between them, ``num_blocks`` shared out evenly (earlier ranges first)."""
    G: nx.DiGraph = probe.graph
    order = sched.order
    bounds = [0, *(c.position for c in sched.cuts), len(order)]
    costs = [node_cost(G, v) for v in order]

    def cost() -> np.ndarray:
        if method is Method.MEMORY:
            saves = [c.saved for c in costs]
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
    ranges = len(edges) - 1
    path = [0]
    for s, (a, b) in enumerate(pairwise(edges)):
        k = num_blocks // ranges + (s < num_blocks % ranges)
        inner = min_max_partition(masked[a:b + 1, a:b + 1], k, weights[a:b + 1], handover[a:b + 1], tolerance)
        path += [a + i for i in inner] + [b]
    return path
