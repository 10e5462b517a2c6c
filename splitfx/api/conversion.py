"""``splitfx.convert``: a plan → a trainable :class:`SplitModule` sharing the user's modules."""
from __future__ import annotations

import inspect
from typing import Any

import torch.fx as fx
from torch import nn

from ..base.errors import ArgumentError, ArgumentTypeError
from ..base.optimizers import OPTIMIZERS
from ..base.report import SplitPlan
from ..base.stage_plan import StageBalance
from ..base.tensors import Inputs, as_tuple
from ..passes.emit import emit_blocks
from ..recipes import LossFn
from ..runtime.split_module import SplitModule
from .planning import plan as make_plan
from .planning import split_of
from .staging import plan_by_time
from .timing import measure_block_times, rebalance_stages
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
    ``num_classes``, ``loss_fn``, ``example_target``, ``leaf_modules``, ``replace``, ``replace_mode``),
    plus ``plan`` (reuse a plan of this same model object instead; its recipe and blocks win, and a
    ``loss_fn`` given here replaces the plan's). ``loss_fn(output, target)`` trains the last block
    and scores every aux head's prediction (default: the task's, cross-entropy on class scores). The
    blocks share ``model``'s module objects; nothing is copied.

    With ``stages=S, stage_balance="time"`` the stages and the blocks are chosen together
    (:mod:`splitfx.api.staging`): the stage boundaries first, at equal training time measured here
    on ``example_inputs`` over finer blocks (:func:`splitfx.measure_block_times`, stepping the
    ``optimizer`` named), then ``num_blocks`` blocks balanced by ``method`` within the stages, which
    are finally grouped by the blocks' own measured times; ``model`` is left as it was."""
    check_convert(model, locals())
    fresh = plan is None  # a plan made here is no one else's: its heads can be trained as they are
    if fresh and loss_fn is not None:  # the plan's heads train with it too
        options["loss_fn"] = loss_fn
    measured = options.get("stage_balance") == StageBalance.TIME
    if measured:  # planned by FLOPs first: check what was given (stages=S among it)
        check_plan_arguments(model, example_inputs, num_blocks=num_blocks, **options)
    if plan is None and measured and options.get("split_points") is None:
        plan = plan_by_time(model, as_tuple(example_inputs), num_blocks, options)
    elif plan is None:
        plan = make_plan(model, example_inputs, num_blocks, **{**options, "stage_balance": "flops"} if measured
                         else options)
    elif options:
        raise ArgumentTypeError(f"convert(plan=...) takes the plan's own options; drop {sorted(options)}")
    split = split_of(plan)
    if split.model is not model:
        raise ArgumentError("plan= was made for another model object; plan and convert the same model.")
    check_output(split.outputs, loss_fn or split.task.loss_fn, type(model).__name__)
    if not fresh:  # the plan may have been converted before: that module trains its heads
        split = split.with_new_heads(loss_fn)
    sm = SplitModule.from_split(split, split.task.loss)
    if measured:
        times = measure_block_times(sm, example_inputs, optimizer=OPTIMIZERS[sm.plan.stages.optimizer])
        sm.plan = rebalance_stages(sm.plan, times, options.get("tolerance", 0.05))
    return sm


def _advertised_signature() -> inspect.Signature:
    """plan's parameters, then convert's own: what help() and IDEs show for convert."""
    shared = list(inspect.signature(make_plan).parameters.values())
    own = [p for name, p in inspect.signature(convert).parameters.items() if name == "plan"]
    return inspect.Signature([*shared, *own], return_annotation=SplitModule)


convert.__signature__ = _advertised_signature()


def segments(plan: SplitPlan, detach: bool = True) -> list[fx.GraphModule]:
    """The blocks of ``plan``'s Split as GraphModules over the model; ``detach=False`` lets gradient
    flow between them (cascade recipes, activation checkpointing over the same segments), emitted
    here unless the recipe's cascade already has them."""
    split = split_of(plan)
    made = split.blocks if detach else split.attached
    return list(made or emit_blocks(split.traced, split.block_nodes, split.cuts, split.baked, detach_input=False))
