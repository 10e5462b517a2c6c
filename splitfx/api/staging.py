"""Pipeline stages and blocks chosen together: ``convert(..., stages=S, stage_balance="time")``.

A pipeline runs at its slowest rank's pace, and blocks balanced by memory are far from balanced in
time (ResNet's early blocks hold large maps and little compute), so grouping K memory-balanced
blocks into S stages leaves a large bubble: with K=4 and S=2 there are only three groupings to
choose from. Here the stage boundaries come first, at equal *measured* time: the model is split
into finer blocks (:data:`FINE_PER_STAGE` per stage), each block's training step is timed on the
example, and the S−1 boundaries that best equalise the stages' summed times are kept as cuts. The
K blocks are then balanced by the plan's method (memory) within each stage.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from ..base.errors import ArgumentError, PlanError
from ..base.optimizers import OPTIMIZERS
from ..base.report import SplitPlan
from ..base.sizes import parse_bytes
from ..passes.partition import min_max_split
from ..planner.budget import most_blocks
from ..planner.driver import Planner
from ..planner.stages import balance_stages
from ..recipes.split import Split
from ..runtime.split_module import SplitModule
from .planning import _defaults, _planner, _remember
from .timing import measure_block_times

FINE_PER_STAGE = 8  # blocks per stage the time is measured over: the stage boundary lands within ~1/8 stage


Timer = Callable[[SplitModule], Sequence[float]]


def plan_by_time(model: nn.Module, inputs: tuple, num_blocks: int, options: dict,
                 timer: Timer | None = None) -> SplitPlan:
    """The plan of ``num_blocks`` blocks on ``options["stages"]`` stages whose boundaries were placed at
    equal measured time (see module docstring); its stages are those boundaries' blocks, reported
    by FLOPs until the caller measures the blocks themselves. ``timer(finer)`` gives the seconds per
    block of the finer split (default :func:`measure_block_times` on ``inputs``; a pipeline has
    rank 0 measure and every rank use its times)."""
    optimizer = options.get("optimizer", "adamw")
    timer = timer or (lambda sm: measure_block_times(sm, inputs, optimizer=OPTIMIZERS[optimizer]))
    return _staged(_placed(_planner_for(model, inputs, options), num_blocks, options["stages"], timer), options)


def plan_at(model: nn.Module, inputs: tuple, num_blocks: int, options: dict, cuts: Sequence[int]) -> SplitPlan:
    """The plan whose blocks end at ``cuts``, positions an earlier plan of this model reported
    (:func:`cut_positions`): how one process trains the blocks a pipeline chose."""
    if len(cuts) != num_blocks - 1:
        raise ArgumentError(f"{len(cuts)} cut positions make {len(cuts) + 1} blocks, not {num_blocks}")
    if len(set(cuts)) != len(cuts):
        raise ArgumentError(f"cut positions {list(cuts)} repeat a position; give each cut once")
    planner = _planner_for(model, inputs, options)
    unknown = sorted(set(cuts) - set(planner.bounds[1:-1]))
    if unknown:
        raise PlanError(f"cut positions {unknown} are not cuts of this model's plan (planned for another model, "
                        "input size or options); train without them, or with the model they were planned for")
    try:
        return _staged(planner.plan(num_blocks, stage_cuts=sorted(cuts)), options)
    except ValueError as err:  # a block between two of the cuts cannot be trained (nothing to learn)
        raise PlanError(f"cut positions {list(cuts)} make a block that cannot be trained ({err}); use the "
                        "positions a run printed for this model") from err


def cut_positions(plan: SplitPlan) -> tuple[int, ...]:
    """Where ``plan``'s blocks end (positions in the traced schedule), for :func:`plan_at`."""
    return tuple(b.end for b in plan.blocks[:-1])


def _planner_for(model: nn.Module, inputs: tuple, options: dict) -> Planner:
    return _planner(model, inputs, **_defaults({k: v for k, v in options.items() if k in _PLANNER}))


def _staged(split: Split, options: dict) -> SplitPlan:
    """``split``'s plan, its blocks grouped into ``options["stages"]`` by predicted FLOPs when given."""
    stages = options.get("stages")
    if stages is None:
        return _remember(split)
    budget = parse_bytes(options["memory_budget"]) if options.get("memory_budget") is not None else None
    staged = balance_stages(split.plan, stages, budget, options.get("optimizer", "adamw"),
                            options.get("tolerance", 0.05))
    return _remember(dataclasses.replace(split, plan=dataclasses.replace(split.plan, stages=staged)))


_PLANNER = ("method", "recipe", "num_classes", "leaf_modules", "replace", "replace_mode", "max_cut_tensors",
            "tolerance", "auto_leaf", "optimizer")


def _placed(planner: Planner, num_blocks: int, stages: int, timer: Timer) -> Split:
    """The split whose stage boundaries equalise the measured time of finer blocks."""
    fine = min(FINE_PER_STAGE * stages, most_blocks(planner.trainable, len(planner.sched.cuts)))
    if fine <= num_blocks or stages == 1:
        return planner.plan(num_blocks)
    grain = planner.plan(fine)
    times = timer(SplitModule.from_split(grain, grain.task.loss))
    total = np.concatenate([[0.0], np.cumsum(times)])
    cost = np.where(np.triu(np.ones((fine + 1, fine + 1), dtype=bool), 1), total[None, :] - total[:, None], np.inf)
    edges = min_max_split(cost, stages)
    try:
        return planner.plan(num_blocks, stage_cuts=[grain.plan.blocks[e - 1].end for e in edges[1:-1]])
    except (ValueError, PlanError):  # a stage too short for its share of the blocks: group them afterwards
        return planner.plan(num_blocks)
