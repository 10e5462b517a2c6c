"""Partition pass for losses that hold two consecutive blocks: exact min-max over a chain.

A cascade recipe's loss k runs block k−1 again beside block k, so what a step keeps alive depends
on two neighbouring blocks, not one. Placing block k from boundary ``i`` to ``j`` after block k−1
from ``h`` to ``i`` costs

    ``max(alone[i, j], pair[i, j] + previous[h, i])``

(:class:`Transition`; ``pair``/``previous`` absent for losses that hold block k alone), and the
chosen split minimises the largest such cost over all blocks, exactly. The dynamic programme keeps,
for every last block ``(i, j)``, the least largest cost so far; for a fixed ``i`` the minimum over
``h`` of ``max(a_h, b_h + c)`` is read off ``h`` sorted by ``a_h − b_h`` (prefix minima of ``b``,
suffix minima of ``a``), so each step costs ``O(M² log M)`` for ``M`` boundaries, not ``O(M³)``.
Among splits within the optimum, the one handing over the fewest tensors (a multi-tensor cut
weighing more than any number of single ones), then the fewest bytes, is taken.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INF = np.inf
_MULTI = 10_000.0  # as in :mod:`.partition`: one multi-tensor cut weighs more than any tensor count


@dataclass(frozen=True)
class Transition:
    """The cost of placing one block (see module docstring). ``alone`` is ``inf`` where the block
    may not go; ``pair``, when set, must be ``inf`` there too."""

    alone: np.ndarray
    pair: np.ndarray | None = None
    previous: np.ndarray | None = None


def chain_partition(steps: Sequence[Transition], boundary_weight: Sequence[float],
                    handover: Sequence[int] | None = None) -> tuple[list[int], float]:
    """Interior boundaries of the best split into ``len(steps)`` blocks, and its largest cost.

    ``steps[0]`` places block 0 (it must have no ``previous``); ``boundary_weight[j]`` is paid and
    ``handover[j]`` tensors handed over when boundary ``j`` is a cut. Raises ValueError when every
    split has an infinite cost."""
    if steps[0].previous is not None:
        raise ValueError("block 0 has no block before it")
    m = steps[0].alone.shape[0]
    upper = np.triu(np.ones((m, m), dtype=bool), 1)
    steps = [_upper(s, upper) for s in steps]
    best = _least_max(steps)
    if not np.isfinite(best):
        raise ValueError(f"no split into {len(steps)} blocks has a finite cost")
    counts = np.ones(m) if handover is None else np.asarray(handover, dtype=float)
    w = np.asarray(boundary_weight, dtype=float)
    scale = float(np.abs(w).sum()) + 1.0
    weight = (_MULTI * (counts > 1) + counts) * scale + w  # tensors first, then bytes
    weight[0] = weight[-1] = 0.0
    return _cheapest(steps, best, weight), best


def _upper(step: Transition, upper: np.ndarray) -> Transition:
    """``step`` with every block that ends before it starts made infeasible."""
    pair = None if step.pair is None else np.where(upper, step.pair, INF)
    return Transition(np.where(upper, step.alone, INF), pair, step.previous)


def _least_max(steps: Sequence[Transition]) -> float:
    """The smallest largest cost over all splits (the first pass of the module docstring)."""
    m = steps[0].alone.shape[0]
    f = np.full((m, m), INF)
    f[0] = steps[0].alone[0]
    for step in steps[1:]:
        f = _advance(f, step)
    return float(f[:, -1].min())


def _advance(f: np.ndarray, step: Transition) -> np.ndarray:
    """``g[i, j]``: the least largest cost of the blocks so far when the new one spans ``i → j``."""
    m = f.shape[0]
    if step.pair is None:
        return np.maximum(f.min(axis=0)[:, None], step.alone)
    g = np.full((m, m), INF)
    for i in range(1, m - 1):
        a, b = f[:, i], step.previous[:, i]
        ok = np.isfinite(a) & np.isfinite(b)
        if not ok.any():
            continue
        a, b = a[ok], b[ok]
        order = np.argsort(a - b, kind="stable")
        d, a, b = (a - b)[order], a[order], b[order]
        low_b = np.minimum.accumulate(b)  # over h with a_h − b_h ≤ c the cost is b_h + c
        high_a = np.minimum.accumulate(a[::-1])[::-1]  # over the others it is a_h
        c = step.pair[i]
        pos = np.searchsorted(d, c, side="right")
        with_b = np.where(pos > 0, low_b[np.maximum(pos - 1, 0)] + c, INF)
        with_a = np.append(high_a, INF)[pos]
        g[i] = np.maximum(np.minimum(with_b, with_a), step.alone[i])
    return g


def _cheapest(steps: Sequence[Transition], bound: float, weight: np.ndarray) -> list[int]:
    """The split of least summed ``weight`` whose every cost is at most ``bound``."""
    m = steps[0].alone.shape[0]
    limit = bound * (1 + 1e-12) + 1e-9
    g = np.full((m, m), INF)
    g[0] = np.where(steps[0].alone[0] <= limit, 0.0, INF)
    parents = []
    for step in steps[1:]:
        g, parent = _advance_sum(g, step, limit, weight)
        parents.append(parent)
    j, i = m - 1, int(np.argmin(g[:, -1]))
    cuts = []
    for parent in reversed(parents):
        cuts.append(i)
        i, j = int(parent[i, j]), i
    return sorted(cuts)


def _advance_sum(g: np.ndarray, step: Transition, limit: float, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least summed weight and the previous block's start for every new block ``i → j``."""
    m = g.shape[0]
    out, parent = np.full((m, m), INF), np.zeros((m, m), dtype=np.int64)
    fits = step.alone <= limit
    for i in range(1, m - 1):
        col = g[:, i]
        if step.pair is None:
            h = int(np.argmin(col))
            out[i] = np.where(fits[i], col[h] + weight[i], INF)
            parent[i] = h
            continue
        prev = step.previous[:, i]
        ok = np.flatnonzero(np.isfinite(col) & np.isfinite(prev))
        if not ok.size:
            continue
        ok = ok[np.argsort(prev[ok], kind="stable")]  # the feasible h are a prefix in this order
        running = np.minimum.accumulate(col[ok])
        at = np.flatnonzero(np.r_[True, running[1:] < running[:-1]])  # where the prefix minimum is set
        arg = ok[at[np.searchsorted(at, np.arange(ok.size), side="right") - 1]]
        pos = np.searchsorted(prev[ok], limit - step.pair[i], side="right")
        cost = np.where(pos > 0, running[np.maximum(pos - 1, 0)] + weight[i], INF)
        out[i] = np.where(fits[i], cost, INF)
        parent[i] = arg[np.maximum(pos - 1, 0)]
    return out, parent
