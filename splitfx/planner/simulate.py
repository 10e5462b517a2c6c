"""The predicted saved activations of each loss: one local step run on fake tensors.

Estimating a block from the whole-model probe over-counts: inside a block whose inputs are
detached, ops before the first parameter do not require grad and save nothing, and an op with one
detached input saves only what the other input's gradient needs. So the chosen blocks, merges, aux
heads and the recipe's own loop run once under the probe's fake mode — no real compute — inside the
same :class:`~splitfx.base.meter.SavedTensorMeter` that measures real runs; after each loss the
meter forgets what was saved, as ``backward`` frees it. The per-loss peaks are then the prediction, exact on CPU.
Where fake tensors cannot run the step (:data:`~splitfx.passes.cost.FAKE_LIMITS`: a leaf module with
data-dependent Python), the plan keeps the per-op estimate and says why; any other error is a bug and raised.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..base.errors import first_line
from ..base.meter import SavedTensorMeter
from ..base.tensors import class_scores, state_slots
from ..passes.aux_cost import AuxProbe
from ..passes.cost import FAKE_LIMITS
from ..recipes.base import LossFn, Recipe, SplitParts
from ..recipes.task import Task, TaskKind


class _Step(nn.Module):
    """Holds every module a step touches, so their tensors can be swapped for fake ones."""

    def __init__(self, parts: SplitParts, recipe: Recipe, extra: nn.Module):
        super().__init__()
        self.model, self.heads, self.extra = parts.model, nn.ModuleList(parts.heads), extra
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "recipe", recipe)

    def forward(self, inputs: tuple, target: torch.Tensor, exclude: set[int]) -> list[int]:
        peaks = []
        with SavedTensorMeter(exclude) as meter:
            for loss in self.recipe.losses(self.parts, inputs, target):
                peaks.append(meter.peak)
                del loss
                meter.forget()
        return peaks


def last_loss(task: Task, outputs: object) -> LossFn | None:
    """The last block's loss in the simulated step, as ``convert`` trains it: the user's ``loss_fn``
    or the task's default. None where the plan cannot know it: an output trained by a ``loss_fn``
    that was not given to the plan (an encoder's features with ``num_classes=``, a structure);
    :func:`summed` then stands in for it, saving nothing (the estimate counts nothing for it either)."""
    if task.loss_fn is not None:
        return task.loss_fn
    if task.kind == TaskKind.STRUCTURED or (task.kind == TaskKind.CLASSES and not class_scores(outputs)):
        return None
    return task.loss


def summed(output: object, target: torch.Tensor) -> torch.Tensor:
    """A loss reading every floating tensor of ``output``: the stand-in for a loss the plan cannot know."""
    leaves = [t.sum() for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return sum(leaves[1:], leaves[0]) if leaves else target.new_zeros((), dtype=torch.float32)


def step_peaks(aux: AuxProbe, parts: SplitParts, recipe: Recipe, extra: nn.Module,
               estimate: list[float]) -> tuple[list[float], str | None]:
    """Peak saved bytes while each loss of one ``recipe`` step is alive, and None; or, where fake
    tensors cannot run the step (a leaf module with data-dependent Python), ``estimate`` and why."""
    probe = aux.probe
    step = _Step(parts, recipe, extra)
    try:
        with probe.fake_mode, fake_state(step, probe.state):
            return step(aux.inputs, aux.target, probe.exclude), None
    except FAKE_LIMITS as err:
        return estimate, first_line(err)


@contextlib.contextmanager
def fake_state(root: nn.Module, fake) -> Iterator[None]:
    """Every parameter and buffer of ``root`` replaced by its fake twin, and put back after.

    Done per module object, not per name: a module reached by two paths (CoaT's shared positional
    encodings) is swapped and restored once."""
    slots = state_slots(root)
    try:
        for tensors, name, t in slots:
            tensors[name] = fake(t)
        yield
    finally:
        for tensors, name, t in slots:
            tensors[name] = t
