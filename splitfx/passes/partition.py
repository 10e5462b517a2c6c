"""Partition pass: exact min-max split of an ordered graph into K contiguous blocks.

Boundaries are indices into a list ``[start, cut_1, ..., cut_m, end]``; ``cost[i, j]`` is the cost
of the block running from boundary ``i`` to boundary ``j`` (``inf``: not allowed). The chosen split
is the lexicographic optimum of

1. the largest block cost, within ``tolerance`` of the smallest possible;
2. the fewest cuts that hand over several tensors, then the fewest tensors handed over;
3. the largest block cost;
4. the smallest block cost, largest first (the spread);
5. the summed boundary weight (bytes handed across cuts).

With one tensor per cut (2) is the same for every split and this is min-max, spread, bytes. Small
dynamic programmes over numpy arrays make the optimum exact: each criterion is a min-max, max-min or
lexicographic min-sum, and optimal sub-splits stay optimal; ``O(K·M²)`` each for ``M`` boundaries.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np

INF = np.inf
_MULTI = 10_000.0  # one multi-tensor cut weighs more than any number of tensors handed over


def min_max_partition(cost: np.ndarray, num_blocks: int, boundary_weight: Sequence[float],
                      handover: Sequence[int] | None = None, tolerance: float = 0.0) -> list[int]:
    """Indices of the ``num_blocks - 1`` interior boundaries of the lexicographic optimum.

    ``cost`` is ``M × M``; ``boundary_weight[j]`` is paid when boundary ``j`` is chosen as a cut and
    ``handover[j]`` is how many tensors that cut hands over (default one each)."""
    m = cost.shape[0]
    if not 1 <= num_blocks <= m - 1:
        raise ValueError(f"num_blocks must be in [1, {m - 1}], got {num_blocks}")
    upper = np.triu(np.ones((m, m), dtype=bool), 1)
    c = np.where(upper, cost, INF)
    split = min_max_split(c, num_blocks)
    if split is None:
        raise ValueError(f"no split into {num_blocks} blocks has a finite cost")
    best_max = float(max(c[i, j] for i, j in pairwise(split)))
    counts = np.ones(m) if handover is None else np.asarray(handover, dtype=float)
    tensors = _MULTI * (counts > 1) + counts
    tensors[0] = tensors[-1] = 0.0
    limit = best_max * (1 + tolerance)
    fewest = _min_sum(c <= limit, [tensors], num_blocks)[0]
    bound = best_max
    if _min_sum(c <= best_max, [tensors], num_blocks)[0] != fewest:
        values = np.unique(c[upper & (c >= best_max) & (c <= limit)])
        lo, hi = 0, len(values) - 1  # the smallest bound that still allows the fewest tensors
        while lo < hi:
            mid = (lo + hi) // 2
            if _min_sum(c <= values[mid], [tensors], num_blocks)[0] == fewest:
                hi = mid
            else:
                lo = mid + 1
        bound = values[lo]
    best_min = _max_min(c, bound, tensors, num_blocks)
    w = np.asarray(boundary_weight, dtype=float).copy()
    w[-1] = 0.0
    return _min_sum(upper & (c <= bound) & (c >= best_min), [tensors, w], num_blocks, backtrack=True)


def min_max_split(cost: np.ndarray, num_blocks: int) -> list[int] | None:
    """Boundaries ``[0, ..., M - 1]`` of a split into ``num_blocks`` blocks whose largest cost is
    the smallest possible (None when every split has an infinite one); ``cost`` as for
    :func:`min_max_partition`, with ``inf`` at and below the diagonal. Among equal splits each block
    starts at the earliest boundary that keeps the optimum: the block partition and the pipeline
    stages both split with this."""
    m = cost.shape[0]
    f = cost[0].copy()  # f[j]: the least largest cost of the blocks so far, ending at boundary j
    starts = []
    for _ in range(num_blocks - 1):
        candidates = np.maximum(f[:, None], cost)
        start = np.argmin(candidates, axis=0)
        f = candidates[start, np.arange(m)]
        starts.append(start)
    if not np.isfinite(f[-1]):
        return None
    bounds = [m - 1]
    for start in reversed(starts):
        bounds.append(int(start[bounds[-1]]))
    return [0, *reversed(bounds)]


def _min_sum(feasible: np.ndarray, weights: list[np.ndarray], num_blocks: int, backtrack: bool = False):
    """Lexicographic minimum of the summed boundary ``weights`` over splits into feasible blocks:
    the optimal sums, or with ``backtrack`` the interior boundaries of an optimal split."""
    m = feasible.shape[0]
    h = [np.where(feasible[0], w, INF) for w in weights]
    choices = []
    for _ in range(num_blocks - 1):
        tie = feasible & np.isfinite(h[0])[:, None]
        for crit in h:
            cand = np.where(tie, crit[:, None], INF)
            tie &= cand == cand.min(axis=0)[None, :]
        arg = np.argmax(tie, axis=0)
        reachable = tie.any(axis=0)
        h = [np.where(reachable, crit[arg] + w, INF) for crit, w in zip(h, weights, strict=True)]
        choices.append(arg)
    if not backtrack:
        return [float(crit[-1]) for crit in h]
    cuts, j = [], m - 1
    for arg in reversed(choices):
        j = int(arg[j])
        cuts.append(j)
    return sorted(cuts)


def _max_min(c: np.ndarray, bound: float, tensors: np.ndarray, num_blocks: int) -> float:
    """Among splits with every block ≤ ``bound`` and the fewest tensors, the largest smallest block."""
    feasible = c <= bound
    h_t = np.where(feasible[0], tensors, INF)
    h_m = np.where(feasible[0], c[0], -INF)
    for _ in range(num_blocks - 1):
        cand_t = np.where(feasible, h_t[:, None], INF)
        tie = np.isfinite(cand_t) & (cand_t == cand_t.min(axis=0)[None, :])
        cand_m = np.where(tie, np.minimum(h_m[:, None], c), -INF)
        h_t = np.where(tie.any(axis=0), cand_t.min(axis=0) + tensors, INF)
        h_m = cand_m.max(axis=0)
    return float(h_m[-1])


def additive_cost(weights: Sequence[float], boundaries: Sequence[int]) -> np.ndarray:
    """Block cost = sum of per-position weights between two boundaries."""
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=float))])
    at = prefix[np.asarray(boundaries)]
    return at[None, :] - at[:, None]


def _save_positions(saves: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """Storage key → the positions that save it, in order."""
    positions: dict[int, list[int]] = {}
    for p, keys in enumerate(saves):
        for key in keys:
            positions.setdefault(key, []).append(p)
    return positions


def first_saves(saves: Sequence[Sequence[int]], storage_bytes: Mapping[int, int]) -> np.ndarray:
    """Bytes of the storages first saved at each position: what E2E training holds as it goes."""
    out = np.zeros(len(saves))
    for key, ps in _save_positions(saves).items():
        out[ps[0]] += storage_bytes[key]
    return out


def storage_cost(
    saves: Sequence[Sequence[int]],
    storage_bytes: Mapping[int, int],
    boundaries: Sequence[int],
    extra: Sequence[Mapping[int, int]] | None = None,
    held: Sequence[Mapping[int, int]] | None = None,
) -> np.ndarray:
    """Saved bytes of each block, counting a storage once per block that saves it.

    ``saves[p]`` lists the storage keys saved at position ``p``. ``extra[j]`` maps key → bytes saved
    by whatever runs after a block that ends at boundary ``j`` (its aux head); ``held[i]`` maps key
    → bytes kept alive while a block that starts at boundary ``i`` runs (the tensors handed to it).
    A key the block itself already saves is not counted twice."""
    positions = _save_positions(saves)
    bounds = np.asarray(boundaries)
    prefix = np.concatenate([[0.0], np.cumsum(first_saves(saves, storage_bytes))])
    cost = prefix[bounds][None, :] - prefix[bounds][:, None]

    def next_save(ps: list[int]) -> np.ndarray:
        """For each boundary: first position >= it that saves the storage (or +inf)."""
        idx = np.searchsorted(ps, bounds)
        padded = np.append(np.asarray(ps, dtype=float), INF)
        return padded[idx]

    for key, ps in positions.items():
        if len(ps) > 1 and ps[-1] > ps[0]:
            spans = (bounds > ps[0]) & (bounds <= ps[-1])  # first saved before the boundary
            if spans.any():
                nxt = next_save(ps)
                cost[spans] += storage_bytes[key] * (nxt[spans][:, None] < bounds[None, :])
    for j, aux in enumerate(extra or ()):
        for key, nbytes in aux.items():
            cost[:, j] += nbytes
            ps = positions.get(key)
            if ps:
                cost[:, j] -= nbytes * (next_save(ps) < bounds[j])
    for i, frontier in enumerate(held or ()):
        for key, nbytes in frontier.items():
            cost[i, :] += nbytes
            ps = positions.get(key)
            if ps:
                cost[i, :] -= nbytes * (next_save(ps)[i] < bounds)
    return cost

