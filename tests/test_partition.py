"""The partitioner against brute force, and the storage-based block cost against explicit sets."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfx.passes.partition import additive_cost, min_max_partition, storage_cost


def objective(cost: np.ndarray, cuts: list[int], weights: list[int]) -> tuple:
    path = [0, *cuts, cost.shape[0] - 1]
    blocks = [cost[i, j] for i, j in itertools.pairwise(path)]
    return max(blocks), max(blocks) - min(blocks), sum(weights[c] for c in cuts)


def brute_force(cost: np.ndarray, k: int, weights: list[int]) -> tuple:
    interior = range(1, cost.shape[0] - 1)
    return min(objective(cost, list(c), weights) for c in itertools.combinations(interior, k - 1))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 50), min_size=2, max_size=11),
    st.lists(st.integers(0, 9), min_size=12, max_size=12),
    st.data(),
)
def test_min_max_matches_brute_force(node_costs, weights, data):
    bounds = list(range(len(node_costs) + 1))
    cost = additive_cost(node_costs, bounds)
    k = data.draw(st.integers(1, len(node_costs)))
    cuts = min_max_partition(cost, k, weights[: len(bounds)])
    assert len(cuts) == k - 1 and cuts == sorted(set(cuts)) and 0 not in cuts and len(bounds) - 1 not in cuts
    assert objective(cost, cuts, weights[: len(bounds)]) == brute_force(cost, k, weights[: len(bounds)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=3, max_size=10), st.data())
def test_storage_cost_counts_each_storage_once_per_block(saves, data):
    sizes = {key: 10 ** key for key in range(6)}
    n = len(saves)
    bounds = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=4))) | {0, n})
    extra = [data.draw(st.dictionaries(st.integers(0, 5).map(lambda k: k), st.just(0))) for _ in bounds]
    extra = [{k: sizes[k] for k in e} for e in extra]
    cost = storage_cost(saves, sizes, bounds, extra)
    for i, j in itertools.combinations(range(len(bounds)), 2):
        keys = {k for p in range(bounds[i], bounds[j]) for k in saves[p]} | set(extra[j])
        assert cost[i, j] == sum(sizes[k] for k in keys)


def test_too_many_blocks_is_an_error():
    cost = additive_cost([1, 2, 3], [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        min_max_partition(cost, 4, [0, 0, 0, 0])
