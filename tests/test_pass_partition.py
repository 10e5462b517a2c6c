"""Hand-computed cases of the partition pass (the brute-force property tests are in test_partition.py)."""
from splitfx.passes.partition import additive_cost, first_saves, min_max_partition, storage_cost

SIZES = {1: 10, 2: 100, 3: 1000, 5: 7}


def test_first_saves_puts_each_storage_at_its_first_saver():
    saves = [[1], [1, 2], [], [3, 2]]
    assert first_saves(saves, SIZES).tolist() == [10, 100, 0, 1000]
    assert first_saves([[], []], SIZES).tolist() == [0, 0]


def test_storage_cost_counts_a_storage_once_per_block_that_saves_it():
    saves = [[1], [2], [1]]  # storage 1 saved at positions 0 and 2
    cost = storage_cost(saves, SIZES, [0, 1, 2, 3])
    assert cost[0, 1] == 10 and cost[1, 2] == 100 and cost[2, 3] == 10
    assert cost[0, 2] == 110 and cost[1, 3] == 110
    assert cost[0, 3] == 110, "one block saving storage 1 twice holds it once"


def test_storage_cost_with_aux_extras_does_not_count_the_blocks_own_storage_twice():
    saves = [[1], [1, 2], [], [3, 2]]
    bounds = [0, 2, 4]
    plain = storage_cost(saves, SIZES, bounds)
    assert plain[0, 1] == 110 and plain[1, 2] == 1100 and plain[0, 2] == 1110
    # the head after boundary 1 saves storage 2 (the block's own) and a new storage 5;
    # the final loss after boundary 2 saves storage 1
    cost = storage_cost(saves, SIZES, bounds, [{}, {2: 100, 5: 7}, {1: 10}])
    assert cost[0, 1] == 110 + 7
    assert cost[1, 2] == 1100 + 10, "block [2, 4) does not save storage 1 itself"
    assert cost[0, 2] == 1110, "block [0, 4) already saves storage 1"


def test_additive_cost_is_the_sum_between_boundaries():
    cost = additive_cost([3, 1, 4, 1, 5], [0, 2, 5])
    assert cost[0, 1] == 4 and cost[1, 2] == 10 and cost[0, 2] == 14


def test_min_max_partition_hand_cases():
    bounds = list(range(7))
    cost = additive_cost([5, 1, 1, 1, 1, 1], bounds)
    assert min_max_partition(cost, 2, [0] * 7) == [1]  # 5 | 5
    # 5 | 1 1 | 1 1 1 and 5 | 1 1 1 | 1 1 tie on max and spread: the boundary weight decides
    assert min_max_partition(cost, 3, [0, 0, 0, 1, 0, 0, 0]) == [1, 4]
    assert min_max_partition(cost, 3, [0, 0, 0, 0, 1, 0, 0]) == [1, 3]
    cost = additive_cost([2, 2, 2, 2], list(range(5)))
    assert min_max_partition(cost, 2, [0] * 5) == [2]
    assert min_max_partition(cost, 4, [0] * 5) == [1, 2, 3]
    assert min_max_partition(cost, 1, [0] * 5) == []


def test_boundary_weight_breaks_ties():
    cost = additive_cost([1, 0, 1], [0, 1, 2, 3])  # cutting at 1 or at 2 both give 1 | 1
    assert min_max_partition(cost, 2, [0, 5, 1, 0]) == [2]
    assert min_max_partition(cost, 2, [0, 1, 5, 0]) == [1]


def test_spread_breaks_ties_before_weight():
    cost = additive_cost([1, 1, 2, 3], list(range(5)))
    # 1 | 1 2 | 3 (cuts 1, 3) and 1 1 | 2 | 3 (cuts 2, 3) both have max 3; the second has the
    # smaller spread (3 - 2 < 3 - 1) and wins even though its boundary 2 is far heavier
    assert min_max_partition(cost, 3, [0, 0, 0, 0, 0]) == [2, 3]
    assert min_max_partition(cost, 3, [0, 0, 100, 0, 0]) == [2, 3]
