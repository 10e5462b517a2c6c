"""``splitfx.measure_block_times``: each block's training time per batch, measured on its device.

Predicted FLOPs are a poor clock across layer shapes: on a CPU a convolution over a large feature
map and one over a small, deep map run at different FLOP rates, so stages balanced by FLOPs are not
balanced in time. A pipeline runs at its slowest rank's pace, so :func:`balance_stages` can balance
the seconds measured here instead (``stage_balance="time"``). A block's time includes its
optimizer step: AdamW over ResNet-50's layer4 costs a third of that block's forward and backward on
a CPU, and the rank holding it pays it every batch.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from ..base.errors import ArgumentError
from ..base.optimizers import MakeOptimizer
from ..base.report import SplitPlan
from ..base.tensors import Inputs, as_tuple
from ..planner.stages import balance_stages
from ..runtime.split_module import SplitModule
from ..runtime.step import run_step


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def _one_pass(sm: SplitModule, inputs: tuple, target: torch.Tensor, autocast_dtype: torch.dtype | None,
              optimizers: Sequence[torch.optim.Optimizer | None]) -> list[float]:
    """Seconds of each block's forward, local loss and backward in one run of ``local_losses``,
    plus its optimizer's step."""
    device = inputs[0].device
    sm.zero_grad(set_to_none=True)
    seconds: list[float] = []
    _sync(device)
    last = time.perf_counter()

    def lap(_k: int) -> None:
        nonlocal last
        _sync(device)
        now = time.perf_counter()
        seconds.append(now - last)
        last = now

    run_step(sm.local_losses(inputs, target), None, device, autocast_dtype=autocast_dtype, after_loss=lap)
    for k, opt in enumerate(optimizers):
        if opt is None:
            continue
        began = time.perf_counter()
        opt.step()
        _sync(device)
        seconds[k] += time.perf_counter() - began
    return seconds


def _trained_by(sm: SplitModule, k: int) -> list[nn.Parameter]:
    """What block ``k``'s step updates: its trainable parameters and its aux head's."""
    head = list(sm.heads[k].parameters()) if k < len(sm.heads) else []
    return [p for p in (*sm.block_parameters(k), *head) if p.requires_grad]


def measure_block_times(sm: SplitModule, inputs: Inputs, target: torch.Tensor | None = None, *, repeats: int = 3,
                        warmup: int = 1, autocast_dtype: torch.dtype | None = None,
                        optimizer: MakeOptimizer | None = torch.optim.AdamW) -> list[float]:
    """Seconds per batch of each block's training step (its forward, its local loss through its aux
    head, backward, and a step of ``optimizer(parameters)`` over its and its head's parameters;
    None leaves the step out) on ``inputs``'s device: the median of ``repeats`` runs after
    ``warmup`` untimed ones. ``target`` defaults to class 0 for every sample (the time does not
    depend on the labels).

    ``sm`` must hold all its tensors (not a pipeline rank's share). It is left as it was: weights,
    buffers (BatchNorm statistics), gradients and the random state are restored afterwards."""
    inputs = as_tuple(inputs)
    device = inputs[0].device
    if repeats < 1 or warmup < 0:
        raise ArgumentError(f"repeats must be ≥ 1 and warmup ≥ 0, got repeats={repeats}, warmup={warmup}")
    if any(t.device.type == "meta" for t in (*sm.parameters(), *sm.buffers())):
        raise ArgumentError("this SplitModule holds only a pipeline stage's tensors (the rest are meta): measure "
                            "the whole SplitModule, before Stage.place")
    if target is None:
        target = torch.zeros(inputs[0].shape[0], dtype=torch.long, device=device)
    state = {name: t.clone() for name, t in sm.state_dict().items()}
    grads = [(p, p.grad) for p in sm.parameters()]
    trained = [_trained_by(sm, k) for k in range(sm.num_blocks)]
    optimizers = [optimizer(params) if optimizer is not None and params else None for params in trained]
    runs: list[list[float]] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for r in range(warmup + repeats):
                seconds = _one_pass(sm, inputs, target, autocast_dtype, optimizers)
                if r >= warmup:
                    runs.append(seconds)
    finally:
        sm.load_state_dict(state)
        for p, g in grads:
            p.grad = g
    return [statistics.median(block) for block in zip(*runs, strict=True)]


def rebalance_stages(plan: SplitPlan, times: Sequence[float], tolerance: float = 0.05) -> SplitPlan:
    """``plan`` with its stages regrouped (same number of stages, optimizer and memory budget) by
    measured ``times``, seconds per block. The blocks do not change, only which rank trains which."""
    old = plan.stages
    if old is None:
        raise ArgumentError("this plan has no pipeline stages to rebalance: plan or convert with stages=S")
    return dataclasses.replace(plan, stages=balance_stages(plan, old.stages, old.memory_budget, old.optimizer,
                                                           tolerance, old.in_flight, times=times))
