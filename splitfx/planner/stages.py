"""Pipeline stages: K planned blocks grouped into S contiguous ranges, balanced by time.

A pipeline runs as fast as its slowest rank, so stages are balanced by training time: measured
seconds per block when given (``times``: a layer's FLOP rate on a CPU depends on its shapes, so
FLOPs mispredict time between resolutions), else predicted training FLOPs (forward + backward ≈
3 × the forward FLOPs of each block and its aux head). Memory is a constraint: a rank holds its
blocks' parameters, gradients and optimizer state, one block's saved activations at a time, the
tensors it receives and the sends it keeps in flight. Two exact min-max dynamic programmes: the
smallest largest stage time T* over the splits whose every stage fits the budget, then among
splits within ``tolerance`` of T* the one whose largest stage memory is least.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations, pairwise

import numpy as np

from ..base.errors import PlanError
from ..base.memory import training_state_bytes
from ..base.report import SplitPlan
from ..base.sizes import nbytes
from ..base.stage_plan import StagePlan
from ..passes.partition import min_max_split

Cost = Callable[[int, int], float]
# With measured times the memory tie-break may give away at most this much speed (about the spread
# of repeated timings): a measured second is what the balance is for.
MEASURED_TOLERANCE = 0.01


def _min_max(blocks: int, stages: int, cost: Cost, allowed: Callable[[int, int], bool]) -> list[int] | None:
    """Boundaries ``[0, ..., blocks]`` splitting ``blocks`` into ``stages`` non-empty ranges that
    minimise the largest ``cost(a, b)``, using only ranges ``allowed``; None when none can."""
    matrix = np.full((blocks + 1, blocks + 1), np.inf)
    for a, b in combinations(range(blocks + 1), 2):
        if allowed(a, b):
            matrix[a, b] = cost(a, b)
    return min_max_split(matrix, stages)


def stage_costs(plan: SplitPlan, optimizer: str = "adamw", in_flight: int = 2) -> tuple[Cost, Cost, Cost]:
    """Training FLOPs, predicted peak memory and bytes sent of the stage holding blocks ``[a, b)``."""
    blocks = plan.blocks
    counted = plan.total_params + sum(b.aux_params for b in blocks)
    # The plan's weight, gradient and optimizer bytes, shared out evenly over its parameters.
    if counted:
        per_param = training_state_bytes(plan.param_bytes, plan.trainable_bytes, optimizer) / counted
    else:
        per_param = float(training_state_bytes(4, 4, optimizer))

    def flops(a: int, b: int) -> float:
        return 3.0 * sum(blocks[k].flops + blocks[k].aux_flops for k in range(a, b))

    def sent(a: int, b: int) -> float:
        return float(blocks[b - 1].handover_bytes)

    def memory(a: int, b: int) -> float:
        state = per_param * sum(blocks[k].params + blocks[k].aux_params for k in range(a, b))
        received = blocks[a - 1].handover_bytes if a else 0
        return state + max(blocks[k].saved_bytes for k in range(a, b)) + received + in_flight * sent(a, b)

    return flops, memory, sent


def _seconds(plan: SplitPlan, times: Sequence[float]) -> Cost:
    """Measured training seconds of the stage holding blocks ``[a, b)``."""
    times = [float(t) for t in times]
    if len(times) != plan.num_blocks or not all(math.isfinite(t) and t > 0 for t in times):
        raise PlanError(f"measured block times must be {plan.num_blocks} positive seconds, one per block of the "
                        f"plan, got {len(times)}: {times}")
    return lambda a, b: sum(times[a:b])


def balance_stages(plan: SplitPlan, stages: int, memory_budget: int | None = None, optimizer: str = "adamw",
                   tolerance: float = 0.05, in_flight: int = 2, times: Sequence[float] | None = None) -> StagePlan:
    """The S-stage pipeline of ``plan`` with the least largest stage time (within ``tolerance``, the
    least largest stage memory), every stage within ``memory_budget`` bytes. Stage time is the sum
    of ``times`` (measured seconds per block, its aux head included; ``tolerance`` then at most
    :data:`MEASURED_TOLERANCE`) when given, else predicted from FLOPs."""
    if stages > plan.num_blocks:
        raise PlanError(f"{stages} pipeline stages need at least {stages} blocks and the plan has "
                        f"{plan.num_blocks}: give num_blocks ≥ {stages} (--blocks), or fewer stages")
    flops, memory, sent = stage_costs(plan, optimizer, in_flight)
    time = flops if times is None else _seconds(plan, times)
    tolerance = tolerance if times is None else min(tolerance, MEASURED_TOLERANCE)
    k = plan.num_blocks

    def fits(a: int, b: int) -> bool:
        return memory_budget is None or memory(a, b) <= memory_budget

    bounds = _min_max(k, stages, time, fits)
    if bounds is None:
        least = _min_max(k, stages, memory, lambda a, b: True)
        peak = max(memory(a, b) for a, b in pairwise(least))
        raise PlanError(f"no split of {k} blocks into {stages} stages fits {nbytes(memory_budget)} per rank: the "
                        f"least largest stage needs {nbytes(peak)}; give more blocks, more stages or a larger budget")
    slowest = max(time(a, b) for a, b in pairwise(bounds))
    bounds = _min_max(k, stages, memory, lambda a, b: fits(a, b) and time(a, b) <= slowest * (1 + tolerance))
    ranges = list(pairwise(bounds))
    return StagePlan(
        ranges=ranges,
        flops=[int(flops(a, b)) for a, b in ranges],
        memory=[int(memory(a, b)) for a, b in ranges],
        handover_bytes=[int(sent(a, b)) if b < k else 0 for a, b in ranges],
        optimizer=optimizer,
        memory_budget=memory_budget,
        in_flight=in_flight,
        seconds=None if times is None else [time(a, b) for a, b in ranges],
    )
