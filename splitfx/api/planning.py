"""``splitfx.plan``: inspect how a model would be split, without converting it."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..base.report import SplitPlan
from ..base.tensors import Inputs, as_tuple
from ..passes.trace import LeafSpec
from ..planner.driver import make_plan
from ..recipes import Recipe, create_recipe
from .validation import check_plan_arguments


def plan(
    model: nn.Module,
    example_inputs: Inputs,
    num_blocks: int = 4,
    *,
    method: str = "memory",
    split_points: Sequence[str] | None = None,
    recipe: str | Recipe = "linear",
    num_classes: int | None = None,
    leaf_modules: Sequence[LeafSpec] = (),
    replace: int | Sequence[str] | None = None,
    replace_mode: str = "tensor",
) -> SplitPlan:
    """Trace ``model``, predict its costs and choose ``num_blocks`` gradient-isolated blocks.

    Nothing is computed for real: costs come from one fake-tensor run. ``method`` balances blocks by
    ``"memory"`` (saved activations, aux head included), ``"flops"``, ``"params"`` or ``"uniform"``;
    ``split_points`` cuts right after the named modules instead. ``recipe`` (a registered name or a
    :class:`Recipe`) decides the aux heads whose cost is counted. ``leaf_modules`` (names or classes)
    stay opaque when tracing. ``replace`` turns on RepL fusion: every n-th interior block of each run
    of identical blocks, or the blocks named; ``replace_mode`` is ``"tensor"`` or ``"channel"``."""
    check_plan_arguments(**locals())
    return make_plan(
        model, as_tuple(example_inputs), num_blocks, method=method, split_points=split_points,
        recipe=create_recipe(recipe), num_classes=num_classes, leaf_modules=leaf_modules, replace=replace,
        replace_mode=replace_mode,
    )
