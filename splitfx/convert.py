"""``splitfx.convert``: a plan → a trainable :class:`SplitModule` sharing the user's modules."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx
from torch import nn

from .passes.emit import emit_block
from .passes.trace import LeafSpec
from .plan import SplitPlan, make_plan
from .recipes import Recipe
from .runtime import LossFn, SplitModule


def convert(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    num_blocks: int = 4,
    recipe: str | Recipe = "linear",
    plan: SplitPlan | None = None,
    *,
    method: str = "memory",
    split_points: Sequence[str] | None = None,
    loss_fn: LossFn | None = None,
    num_classes: int | None = None,
    leaf_modules: Sequence[LeafSpec] = (),
    replace: int | Sequence[str] | None = None,
    replace_mode: str = "tensor",
) -> SplitModule:
    """Split ``model`` into ``num_blocks`` gradient-isolated blocks with generated aux heads.

    ``plan`` reuses a :func:`splitfx.plan` result for this same model (its recipe wins). The blocks
    share ``model``'s module objects; nothing is copied. ``loss_fn(output, target)`` trains the last
    block (default cross-entropy). ``replace`` turns on RepL fusion (see :func:`splitfx.plan`)."""
    if plan is None:
        plan = make_plan(model, example_inputs, num_blocks, method, split_points, recipe, num_classes, leaf_modules,
                         replace, replace_mode)
    elif plan.context is None or plan.context.model is not model:
        raise ValueError("plan= was made for another model object; plan and convert the same model.")
    ctx = plan.context
    cuts = [None, *ctx.cuts, None]
    def blocks(detach: bool) -> list:
        return [
            emit_block(ctx.gm, ctx.probe.graph, ctx.sched, b.start, b.end, cuts[k], cuts[k + 1], k, detach)
            for k, b in enumerate(plan.blocks)
        ]

    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    heads = [ctx.recipe.make_head(b, ctx.graph).to(device).train(model.training) for b in ctx.boundaries]
    attached = segments(plan, detach=False) if ctx.recipe.cascade else []
    return SplitModule(plan, segments(plan), heads, loss_fn or nn.CrossEntropyLoss(), attached)


def segments(plan: SplitPlan, detach: bool = True) -> list[fx.GraphModule]:
    """The plan's blocks as GraphModules over the model; ``detach=False`` lets gradient flow
    between them (cascade recipes, activation checkpointing over the same segments)."""
    if plan.context is None:
        raise ValueError("this plan was detached from its graph; use the plan splitfx.plan returned")
    ctx = plan.context
    cuts = [None, *ctx.cuts, None]
    return [
        emit_block(ctx.gm, ctx.probe.graph, ctx.sched, b.start, b.end, cuts[k], cuts[k + 1], k, detach)
        for k, b in enumerate(plan.blocks)
    ]
