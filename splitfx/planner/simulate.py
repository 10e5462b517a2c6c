"""The predicted saved activations of each loss: one local step run on fake tensors.

Estimating a block from the whole-model probe over-counts: inside a block whose inputs are
detached, ops before the first parameter do not require grad and save nothing, and an op with one
detached input saves only what the other input's gradient needs. So the chosen blocks, merges, aux
heads and the recipe's own loop run once under the probe's fake mode — no real compute — inside the
same :class:`~splitfx.base.meter.SavedTensorMeter` that measures real runs; after each loss the
meter forgets what was saved, as ``backward`` frees it. The per-loss peaks are then the prediction, exact on CPU.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..base.meter import SavedTensorMeter
from ..base.tensors import state_slots
from ..passes.aux_cost import AuxProbe
from ..recipes.base import Recipe, SplitParts


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


def step_peaks(aux: AuxProbe, parts: SplitParts, recipe: Recipe, extra: nn.Module) -> list[int] | None:
    """Peak saved bytes while each loss of one ``recipe`` step is alive (None if fake tensors cannot
    run it, e.g. a leaf module with data-dependent Python; the caller then keeps its estimate)."""
    probe = aux.probe
    step = _Step(parts, recipe, extra)
    try:
        with probe.fake_mode, _fake_state(step, probe.state):
            return step(aux.inputs, aux.target, probe.exclude)
    except Exception:
        return None


@contextlib.contextmanager
def _fake_state(root: nn.Module, fake) -> Iterator[None]:
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
