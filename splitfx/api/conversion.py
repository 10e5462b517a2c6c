"""``splitfx.convert``: a plan → a trainable :class:`SplitModule` sharing the user's modules."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..base.report import SplitPlan
from ..base.tensors import Inputs
from ..passes.emit import block_parameters, emit_block
from ..planner.context import PlanContext
from ..recipes import LossFn
from ..runtime.split_module import SplitModule
from .planning import plan as make_plan


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
    last block (default cross-entropy). The blocks share ``model``'s module objects; nothing is copied."""
    fresh = plan is None  # a plan made here is no one else's: its heads can be used as they are
    if plan is None:
        plan = make_plan(model, example_inputs, num_blocks, **options)
    elif options:
        raise TypeError(f"convert(plan=...) takes the plan's own options; drop {sorted(options)}")
    ctx = _context(plan)
    if ctx.model is not model:
        raise ValueError("plan= was made for another model object; plan and convert the same model.")
    parts = ctx.parts
    heads = parts.heads if fresh else [ctx.recipe.make_head(b, ctx.graph).to(_device(model)) for b in ctx.boundaries]
    return SplitModule(
        dataclasses.replace(plan, context=None),  # the fake-tensor probe is not needed any more
        ctx.recipe, ctx.gm, parts.blocks, [h.train(model.training) for h in heads], parts.merges,
        loss_fn or nn.CrossEntropyLoss(), [block_parameters(ctx.gm, nodes) for nodes in ctx.block_nodes],
        parts.attached,
    )


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
    return [emit_block(ctx.gm, nodes, cuts[k], cuts[k + 1], k, detach) for k, nodes in enumerate(ctx.block_nodes)]


def _device(model: nn.Module) -> torch.device:
    ref = next(iter(model.parameters()), None)
    return ref.device if ref is not None else torch.device("cpu")


def _context(plan: SplitPlan) -> PlanContext:
    if not isinstance(plan.context, PlanContext):
        raise ValueError("this plan was detached from its graph (SplitModule.plan); use the plan splitfx.plan returned")
    return plan.context
