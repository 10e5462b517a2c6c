"""The two-block (cascade) partition against brute force over every split."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfx.passes.chain_partition import Transition, chain_partition
from splitfx.passes.partition import additive_cost


def costs(steps, cuts, m):
    """Each block's cost under ``steps`` for the split with interior boundaries ``cuts``."""
    path = [0, *cuts, m - 1]
    out = []
    for k, (i, j) in enumerate(itertools.pairwise(path)):
        s = steps[k]
        c = s.alone[i, j]
        if s.pair is not None:
            c = max(c, s.pair[i, j] + s.previous[path[k - 1], i])
        out.append(c)
    return out


def cascade(a, b, k):
    """HPFF's shape: block 0 costs nothing alone, block 1 its cost plus block 0's, later blocks twice
    their own plus the previous block's."""
    zero = np.where(np.isfinite(a), 0.0, np.inf)
    steps = [Transition(zero)]
    for n in range(1, k):
        steps.append(Transition(a, a, b) if n == 1 else Transition(zero, 2 * a, b))
    return steps


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=2, max_size=9), st.lists(st.integers(0, 20), min_size=10, max_size=10),
       st.lists(st.integers(0, 9), min_size=10, max_size=10), st.data())
def test_chain_partition_is_the_brute_force_optimum(node_costs, head_costs, weights, data):
    m = len(node_costs) + 1
    b = additive_cost(node_costs, list(range(m)))
    a = b + np.asarray(head_costs[:m], dtype=float)[None, :]  # a block and the head at its end
    k = data.draw(st.integers(2, len(node_costs)))
    steps = cascade(a, b, k)
    w = weights[:m]
    cuts, best = chain_partition(steps, w)
    assert len(cuts) == k - 1 and cuts == sorted(set(cuts)) and cuts[0] > 0 and cuts[-1] < m - 1
    splits = [list(c) for c in itertools.combinations(range(1, m - 1), k - 1)]
    least = min(max(costs(steps, c, m)) for c in splits)
    assert best == least == max(costs(steps, cuts, m))
    assert sum(w[c] for c in cuts) == min(sum(w[c] for c in s) for s in splits if max(costs(steps, s, m)) == least)


def test_fewest_tensors_before_fewest_bytes():
    b = additive_cost([1, 1, 1, 1], list(range(5)))
    steps = [Transition(b), Transition(b), Transition(b)]  # every split into 1+1+2 blocks ties on max 2
    cuts, best = chain_partition(steps, [0, 0, 9, 9, 0], handover=[1, 3, 1, 1, 1])
    assert best == 2 and cuts == [2, 3], "the three-tensor cut at 1 is avoided although it hands over fewer bytes"


def test_infeasible_split_is_an_error():
    b = additive_cost([1, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="finite cost"):
        chain_partition([Transition(b), Transition(np.full((3, 3), np.inf))], [0, 0, 0])
