"""``splitfx.plan`` and ``splitfx.max_batch``: inspect how a model would be split, without converting it."""
from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from ..base.errors import ArgumentError, PlanError
from ..base.report import SplitPlan
from ..base.sizes import parse_bytes
from ..base.stage_plan import StageBalance
from ..base.tensors import Inputs, as_tuple
from ..passes.trace import LeafSpec
from ..planner.budget import largest_batch, most_blocks, smallest_blocks
from ..planner.driver import Planner
from ..planner.stages import balance_stages
from ..recipes import LossFn, Recipe, create_recipe
from ..recipes.split import Split
from .input_shape import check_example_shape
from .validation import check_plan_arguments

# Enough for every frontier of the zoo's dense blocks and multi-branch stages (docs/design.md):
# beyond it a cut costs a message per tensor in a pipeline and a wide merged aux input.
MAX_CUT_TENSORS = 16

# The Split behind each plan this process handed out, kept while that plan lives: what
# ``convert(plan=...)`` and ``segments`` build from, so the report itself stays plain data.
_SPLITS: dict[int, Split] = {}


def _remember(split: Split) -> SplitPlan:
    """``split``'s report, as a plan :func:`split_of` knows. The plan handed out is a copy of the one
    the Split holds, so that the entry never keeps its own key alive."""
    report = dataclasses.replace(split.plan)
    _SPLITS[id(report)] = split
    weakref.finalize(report, _SPLITS.pop, id(report), None)
    return report


def split_of(plan: SplitPlan) -> Split:
    """The Split that ``plan`` reports: its traced graph, emitted blocks and heads."""
    split = _SPLITS.get(id(plan))
    if split is None:
        raise ArgumentError("this plan has no graph behind it (a SplitModule's plan, a copy or a rebalanced plan): "
                            "use the plan that splitfx.plan returned")
    return split


def plan(
    model: nn.Module,
    example_inputs: Inputs,
    num_blocks: int = 4,
    *,
    method: str = "memory",
    split_points: Sequence[str] | None = None,
    recipe: str | Recipe = "linear",
    num_classes: int | None = None,
    loss_fn: LossFn | None = None,
    example_target: torch.Tensor | None = None,
    leaf_modules: Sequence[LeafSpec] = (),
    replace: int | Sequence[str] | None = None,
    replace_mode: str = "tensor",
    max_cut_tensors: int | None = MAX_CUT_TENSORS,
    tolerance: float = 0.05,
    memory_budget: int | str | None = None,
    tied: str = "together",
    optimizer: str = "adamw",
    auto_leaf: bool = True,
    stages: int | None = None,
    stage_balance: str | Sequence[float] = "flops",
) -> SplitPlan:
    """Trace ``model``, predict its costs and choose ``num_blocks`` gradient-isolated blocks.

    Nothing is computed for real: costs come from one fake-tensor run. ``method`` balances blocks by
    ``"memory"`` (saved activations, aux head included), ``"flops"``, ``"params"`` or ``"uniform"``;
    ``split_points`` cuts right after the named modules instead. ``recipe`` (a registered name or a
    :class:`Recipe`) decides the aux heads whose cost is counted.

    The heads are told the task: they predict what the model outputs (class scores, values, token
    sequences, maps, images, or a dict/tuple of those) and are scored with ``loss_fn(output,
    target)``, costed on a target shaped like ``example_target`` (a tensor or a fake one; default: a
    ``[B]`` class target for class scores, else a target shaped like the output). ``num_classes``
    makes the heads classify whatever the output (an encoder trained by its own loss). Without
    ``loss_fn`` the task's default trains them: cross-entropy for class targets, MSE for values, L1
    for images (:mod:`splitfx.recipes.task`). ``leaf_modules`` (names or classes)
    stay opaque when tracing. ``replace`` turns on RepL fusion: every n-th interior block of each run
    of identical blocks, or the blocks named; ``replace_mode`` is ``"tensor"`` or ``"channel"``.

    A cut may hand over up to ``max_cut_tensors`` tensors at once (None: any number): HRNet's
    branches, DenseNet's dense features, a residual block entered half-way. Among splits whose
    largest block is within ``tolerance`` (a fraction) of the best balance, the planner prefers
    fewer multi-tensor cuts and fewer tensors handed over, so residual networks still cut between
    stages when that is as good.

    ``memory_budget`` (bytes, or a string such as ``"4GiB"``) chooses K instead of ``num_blocks``:
    the fewest blocks whose predicted training peak (:meth:`SplitPlan.training_peak_bytes` with
    ``optimizer``) fits; a budget no K meets is a :class:`PlanError` stating the smallest peak.

    ``tied`` says what a trainable parameter used in several places (``lm_head.weight = wte.weight``,
    a module called twice) does: ``"together"`` keeps its uses in one block (no cut between them, the
    model's own gradient); ``"detach"`` cuts anywhere, the first block using it trains it and later
    blocks read it detached (a departure: no gradient reaches it from those uses).

    With ``auto_leaf`` (the default), a submodule fx cannot trace is kept whole as a leaf and the
    model still splits around it (``plan.auto_leaves`` says which and why); ``False`` raises instead.

    ``stages`` groups the blocks into that many pipeline ranks (``plan.stages``); ``memory_budget``
    is then each rank's limit and K stays ``num_blocks``. ``stage_balance`` says what the stages
    balance: ``"flops"`` (predicted training FLOPs), measured seconds per block (a sequence of K, as
    :func:`splitfx.measure_block_times` returns), or ``"time"``, which only :func:`splitfx.convert`
    takes (it measures the blocks it made)."""
    check_plan_arguments(**locals())
    if stage_balance == StageBalance.TIME:
        raise ArgumentError("stage_balance='time' measures the converted blocks: use splitfx.convert(..., "
                            "stage_balance='time'), or pass the seconds per block that "
                            "splitfx.measure_block_times(split_module, inputs) returns")
    planner = _planner(model, as_tuple(example_inputs), method, recipe, num_classes, leaf_modules, replace,
                       replace_mode, max_cut_tensors, tolerance, auto_leaf, optimizer, loss_fn, example_target,
                       tied=tied)
    if stages is not None:
        made = planner.plan(num_blocks, split_points)
        budget = parse_bytes(memory_budget) if memory_budget is not None else None
        times = None if isinstance(stage_balance, str) else stage_balance
        staged = balance_stages(made.plan, stages, budget, optimizer, tolerance, times=times)
        return _remember(dataclasses.replace(made, plan=dataclasses.replace(made.plan, stages=staged)))
    if memory_budget is None:
        return _remember(planner.plan(num_blocks, split_points))
    if split_points is not None:
        raise PlanError("memory_budget= chooses the number of blocks; it cannot be combined with split_points=")
    # The budget looks for K among the plans whose blocks each hold a whole layer (planner/legality.py).
    most = most_blocks(planner.trainable & planner.whole, len(planner.sched.cuts)) if planner.recipe.traits.split \
        else 1
    return _remember(smallest_blocks(planner.plan, most, parse_bytes(memory_budget), optimizer))


def max_batch(
    model: nn.Module,
    example_inputs: Inputs,
    num_blocks: int = 4,
    *,
    memory_budget: int | str,
    optimizer: str = "adamw",
    **options,
) -> SplitPlan:
    """The plan at the largest batch size whose predicted training peak at ``num_blocks`` blocks fits
    ``memory_budget``; its ``input_shapes`` say the batch. Takes :func:`plan`'s other keywords."""
    if memory_budget is None:
        raise ArgumentError("max_batch needs memory_budget= (bytes, or a size such as '4GiB'): the memory the "
                            "batch must fit in")
    check_plan_arguments(model, example_inputs, num_blocks=num_blocks, memory_budget=memory_budget,
                         optimizer=optimizer, **options)
    inputs = as_tuple(example_inputs)
    batch = inputs[0].shape[0]
    split_points = options.pop("split_points", None)

    def at_batch(x: torch.Tensor, b: int) -> torch.Tensor:
        """``x`` at batch ``b``, its first sample expanded: nothing allocated (the planner's fake
        twin is a whole batch, :meth:`~splitfx.passes.cost.Probe.fake`)."""
        return x[:1].expand(b, *x.shape[1:]) if x.dim() and x.shape[0] == batch else x

    def split_at(b: int) -> Split:
        resized = tuple(at_batch(x, b) for x in inputs)
        known = _defaults(options)
        if known["example_target"] is not None:
            known["example_target"] = at_batch(known["example_target"], b)
        return _planner(model, resized, **known, optimizer=optimizer).plan(num_blocks, split_points)

    return _remember(largest_batch(split_at, batch, parse_bytes(memory_budget), optimizer))


def _defaults(options: dict) -> dict:
    known = dict(method="memory", recipe="linear", num_classes=None, loss_fn=None, example_target=None,
                 leaf_modules=(), replace=None, replace_mode="tensor", max_cut_tensors=MAX_CUT_TENSORS, tolerance=0.05,
                 auto_leaf=True, tied="together")
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"max_batch() got unexpected keywords {sorted(unknown)}")
    return {**known, **options}


def _planner(model: nn.Module, inputs: tuple[torch.Tensor, ...], method: str, recipe: str | Recipe,
             num_classes: int | None, leaf_modules: Sequence[LeafSpec], replace, replace_mode: str,
             max_cut_tensors: int | None, tolerance: float, auto_leaf: bool = True,
             optimizer: str = "adamw", loss_fn: LossFn | None = None,
             example_target: torch.Tensor | None = None, tied: str = "together") -> Planner:
    """The planner of ``model``; where tracing or probing it fails because of the example's shape, an
    :class:`ArgumentError` saying which shape it takes (the model's own error is its ``__cause__``)."""
    recipe = create_recipe(recipe)
    try:
        return Planner(model, inputs, method=method, recipe=recipe, num_classes=num_classes,
                       leaf_modules=leaf_modules, replace=replace, replace_mode=replace_mode,
                       max_cut_tensors=max_cut_tensors, tolerance=tolerance, auto_leaf=auto_leaf,
                       optimizer=optimizer, loss_fn=loss_fn, example_target=example_target,
                       tied=tied)
    except Exception as err:
        check_example_shape(model, inputs, err)
        raise
