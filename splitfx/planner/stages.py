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
from itertools import pairwise

from ..base.errors import PlanError
from ..base.report import OPTIMIZER_STATES, SplitPlan, nbytes
from ..base.stages import StagePlan

Cost = Callable[[int, int], float]
# With measured times the memory tie-break may give away at most this much speed (about the spread
# of repeated timings): a measured second is what the balance is for.
MEASURED_TOLERANCE = 0.01


def _min_max(blocks: int, stages: int, cost: Cost, allowed: Callable[[int, int], bool]) -> list[int] | None:
    """Boundaries ``[0, ..., blocks]`` splitting ``blocks`` into ``stages`` non-empty ranges that
    minimise the largest ``cost(a, b)``, using only ranges ``allowed``; None when none can."""
    inf = float("inf")
    best = [[inf] * (blocks + 1) for _ in range(stages + 1)]
    back = [[0] * (blocks + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for b in range(s, blocks - (stages - s) + 1):
            for a in range(s - 1, b):
                if best[s - 1][a] < inf and allowed(a, b):
                    value = max(best[s - 1][a], cost(a, b))
                    if value < best[s][b]:
                        best[s][b], back[s][b] = value, a
    if best[stages][blocks] == inf:
        return None
    bounds = [blocks]
    for s in range(stages, 0, -1):
        bounds.append(back[s][bounds[-1]])
    return bounds[::-1]


def stage_costs(plan: SplitPlan, optimizer: str = "adamw", in_flight: int = 2) -> tuple[Cost, Cost, Cost]:
    """Training FLOPs, predicted peak memory and bytes sent of the stage holding blocks ``[a, b)``."""
    blocks = plan.blocks
    counted = plan.total_params + sum(b.aux_params for b in blocks)
    itemsize = plan.param_bytes / counted if counted else 4.0
    trainable = plan.trainable_bytes / plan.param_bytes if plan.param_bytes else 1.0
    per_param = itemsize * (1 + trainable * (1 + OPTIMIZER_STATES[optimizer]))

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
