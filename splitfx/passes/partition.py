"""Partition pass: exact min-max split of an ordered graph into K contiguous blocks.

Boundaries are indices into a list ``[start, cut_1, ..., cut_m, end]``; ``cost[i, j]`` is the cost
of the block running from boundary ``i`` to boundary ``j``. The chosen split minimises, in order:
the largest block cost, then the spread (largest − smallest), then the summed weight of the chosen
boundaries (bytes handed across cuts). Three small dynamic programmes over numpy arrays make that
lexicographic optimum exact; ``O(K·M²)`` for ``M`` boundaries.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

INF = np.inf


def min_max_partition(cost: np.ndarray, num_blocks: int, boundary_weight: Sequence[float]) -> list[int]:
    """Indices of the ``num_blocks - 1`` interior boundaries of the lexicographic optimum.

    ``cost`` is ``M × M`` with ``inf`` where ``i >= j``; ``boundary_weight[j]`` is paid when
    boundary ``j`` is chosen as a cut."""
    m = cost.shape[0]
    if not 1 <= num_blocks <= m - 1:
        raise ValueError(f"num_blocks must be in [1, {m - 1}], got {num_blocks}")
    upper = np.triu(np.ones((m, m), dtype=bool), 1)
    c = np.where(upper, cost, INF)

    # 1. minimise the maximum block cost
    f = c[0].copy()
    for _ in range(num_blocks - 1):
        f = np.min(np.maximum(f[:, None], c), axis=0)
    best_max = f[-1]

    # 2. among those, maximise the minimum block cost
    lo = np.where(upper & (c <= best_max), c, -INF)
    g = lo[0].copy()
    for _ in range(num_blocks - 1):
        g = np.max(np.minimum(g[:, None], lo), axis=0)
    best_min = g[-1]

    # 3. among those, minimise the summed boundary weight
    feasible = upper & (c <= best_max) & (c >= best_min)
    w = np.asarray(boundary_weight, dtype=float).copy()
    w[-1] = 0.0
    h = np.where(feasible[0], w, INF)
    choices = []
    for _ in range(num_blocks - 1):
        total = np.where(feasible, h[:, None], INF)
        arg = np.argmin(total, axis=0)
        h = total[arg, np.arange(m)] + w
        choices.append(arg)
    cuts, j = [], m - 1
    for arg in reversed(choices):
        j = int(arg[j])
        cuts.append(j)
    return sorted(cuts)


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
) -> np.ndarray:
    """Saved bytes of each block, counting a storage once per block that saves it.

    ``saves[p]`` lists the storage keys saved at position ``p``. ``extra[j]`` maps key → bytes saved
    by whatever runs after a block that ends at boundary ``j`` (its aux head); a key the block
    itself already saves is not counted twice."""
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
    return cost

