"""``splitfx.convert``: a plan → a trainable :class:`SplitModule` sharing the user's modules."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch.fx as fx
from torch import nn

from ..base.errors import ArgumentError, ArgumentTypeError
from ..base.report import SplitPlan
from ..base.tensors import Inputs
from ..passes.emit import block_parameters, emit_block, shared_constants
from ..planner.context import PlanContext
from ..recipes import LossFn
from ..runtime.split_module import SplitModule
from .planning import plan as make_plan
from .timing import OPTIMIZERS, measure_block_times, rebalance_stages
from .validation import check_convert, check_output, check_plan_arguments


def convert(
    model: nn.Module,
    example_inputs: Inputs,
    num_blocks: int = 4,
    *,
    plan: SplitPlan | None = None,
    loss_fn: LossFn | None = None,
    **options: Any,
) -> SplitModule:
    """Split ``model`` into ``num_blocks`` gradient-isolated blocks with generated aux heads.

    Takes every keyword of :func:`splitfx.plan` (``method``, ``split_points``, ``recipe``,
    ``num_classes``, ``leaf_modules``, ``replace``, ``replace_mode``), plus ``plan`` (reuse a plan of
    this same model object instead; its recipe and blocks win) and ``loss_fn(output, target)`` for the
    last block (default cross-entropy). The blocks share ``model``'s module objects; nothing is copied.

    With ``stages=S, stage_balance="time"`` the stages are balanced by each block's training time
    measured here on ``example_inputs`` (:func:`splitfx.measure_block_times`, stepping the
    ``optimizer`` named) instead of predicted FLOPs; ``model`` is left as it was."""
    check_convert(model, locals())
    fresh = plan is None  # a plan made here is no one else's: its heads can be used as they are
    measured = options.get("stage_balance") == "time"
    if measured:  # planned by FLOPs first: check what was given (stages=S among it)
        check_plan_arguments(model, example_inputs, num_blocks=num_blocks, **options)
    if plan is None:
        plan = make_plan(model, example_inputs, num_blocks, **{**options, "stage_balance": "flops"} if measured
                         else options)
    elif options:
        raise ArgumentTypeError(f"convert(plan=...) takes the plan's own options; drop {sorted(options)}")
    ctx = _context(plan)
    if ctx.model is not model:
        raise ArgumentError("plan= was made for another model object; plan and convert the same model.")
    check_output(ctx.probe.outputs, loss_fn, type(model).__name__)
    parts = ctx.parts
    heads = [_like(h if fresh else ctx.recipe.make_head(b, ctx.graph), model)
             for h, b in zip(parts.heads, ctx.boundaries, strict=True)]
    sm = SplitModule(
        dataclasses.replace(plan, context=None),  # the fake-tensor probe is not needed any more
        ctx.recipe, ctx.gm, parts.blocks, heads, parts.merges,
        loss_fn or nn.CrossEntropyLoss(), [block_parameters(ctx.gm, nodes) for nodes in ctx.block_nodes],
        parts.attached,
    )
    sm.training = model.training  # the SplitModule's mode is the model's (its submodules keep their own)
    if measured:
        times = measure_block_times(sm, example_inputs, optimizer=OPTIMIZERS[sm.plan.stages.optimizer])
        rebalance_stages(sm, times, options.get("tolerance", 0.05))
    return sm


def _like(head: nn.Module, model: nn.Module) -> nn.Module:
    """An aux head on the device, in the floating dtype and in the train/eval mode of ``model``."""
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    if ref is not None:
        head = head.to(device=ref.device, dtype=ref.dtype)
    return head.train(model.training)


def _advertised_signature() -> inspect.Signature:
    """plan's parameters, then convert's own: what help() and IDEs show for convert."""
    shared = list(inspect.signature(make_plan).parameters.values())
    own = [p for name, p in inspect.signature(convert).parameters.items() if name in ("plan", "loss_fn")]
    return inspect.Signature([*shared, *own], return_annotation=SplitModule)


convert.__signature__ = _advertised_signature()


def segments(plan: SplitPlan, detach: bool = True) -> list[fx.GraphModule]:
    """The plan's blocks as GraphModules over the model; ``detach=False`` lets gradient flow
    between them (cascade recipes, activation checkpointing over the same segments)."""
    ctx = _context(plan)
    cuts = [None, *ctx.cuts, None]
    blocks, baked = ctx.block_nodes, shared_constants(ctx.block_nodes, ctx.sched.baked)
    return [emit_block(ctx.gm, nodes, cuts[k], cuts[k + 1], k, detach, baked) for k, nodes in enumerate(blocks)]


def _context(plan: SplitPlan) -> PlanContext:
    if not isinstance(plan.context, PlanContext):
        raise ArgumentError("this plan was detached from its graph (SplitModule.plan); use the plan that "
                            "splitfx.plan returned")
    return plan.context
