"""``tandem``: Local Tandem Learning (Yang et al., NeurIPS 2022): each block learns to reproduce a
trained teacher's activations where it ends.

Published (METHODS.md; the authors' code): a student of the teacher's topology learns layer by
layer; each layer reads its previous layer's output, detached; its loss is the mean squared error
between its activity (a spiking student's spike rate over T steps) and the teacher's activation at
the same place, normalised per layer and batch as ``clamp(a / P99.9(a), 0, 1)``; the last layer
learns the labels. The teacher runs in eval mode, without gradients, on the same batch.

Here: a block is what the planner cuts (several layers), its head is parameter-free (the rate over
the time steps folded into the batch by :func:`splitfx.spiking`, or the activity itself for an
ordinary student); the teacher's node at each cut is found by :class:`~.teacher.Teacher` (cuts it
has no counterpart for are not offered). Departures: the percentile scale is taken of the magnitude
and the clamp is to [-1, 1], which is LTL's for the non-negative activations its teachers have and
keeps the sign of a signed one (a transformer's tokens). ``percentile="auto"`` (the default)
normalises for a spiking student, whose rates live in [0, 1] (LTL's 99.9), and compares raw
activations for an ordinary one (block-wise feature distillation): an ordinary student taught
normalised values ends 2 points below its teacher on the embedded digits, taught raw ones level with
it (docs/ltl.md); ``percentile=None`` always compares raw values. ``teacher_inputs=True`` (teacher
forcing, not in the paper's code) feeds block k the teacher's activation at cut k−1, scaled as the
targets are (repeated over the time steps for a spiking student), instead of the student's, so no
block depends on another.
``teacher=None`` uses a frozen copy of the model as converted: it anchors each block to what the
model computed before training (retraining a pretrained model block by block after pruning or
quantising it). The teacher's values at every cut are computed once per step and each is freed
after its block's loss.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..base.errors import PlanError
from ..passes.snn import over_time, time_average
from .base import Boundary, GraphInfo, Recipe, RecipeTraits, SplitParts, handed
from .registry import register_recipe
from .teacher import Teacher, normalised


class Rate(nn.Module):
    """Tandem's head: the block's activity, averaged over the ``steps`` time steps its batch folds
    (1: the activity itself). ``teacher_nodes`` are the nodes of ``teacher`` its cut's tensors match;
    the teacher is held as a plain attribute (not a submodule: never trained, never in a state dict)."""

    def __init__(self, steps: int, teacher_nodes: tuple[str, ...], teacher: Teacher):
        super().__init__()
        self.steps, self.teacher_nodes = steps, teacher_nodes
        object.__setattr__(self, "teacher", teacher)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.steps == 1 else time_average(x, self.steps)

    def over_time(self, t: torch.Tensor) -> torch.Tensor:
        """A teacher's value as a block's input: repeated over the time steps (direct encoding)."""
        return t if self.steps == 1 else over_time(t, self.steps)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, teacher={', '.join(self.teacher_nodes)}"


SPIKING_PERCENTILE = 99.9  # LTL's, for targets a spike rate in [0, 1] can reach


@register_recipe("tandem")
class Tandem(Recipe):
    paper = "Yang et al., NeurIPS 2022 (LTL)"
    # Heads reproduce the teacher, not the task's output; every pipeline stage runs the teacher on the inputs.
    traits = RecipeTraits(uses_inputs=True, predicts=False)

    def __init__(self, teacher: nn.Module | None = None, percentile: float | str | None = "auto",
                 teacher_inputs: bool = False, rename: Mapping[str, str] | None = None):
        if percentile != "auto" and percentile is not None and (
                isinstance(percentile, (str, bool)) or not 0 < float(percentile) <= 100):
            raise ValueError(f"percentile must be in (0, 100], None or 'auto', got {percentile!r}")
        self.teacher, self.teacher_inputs, self.rename = teacher, bool(teacher_inputs), rename
        self.percentile = percentile if percentile in (None, "auto") else float(percentile)
        # Forced, a stage's first block would read the teacher's value at a cut whose head is on the
        # rank before: not pipelined.
        self.traits = dataclasses.replace(Tandem.traits, pipelined=not self.teacher_inputs)
        self._made: tuple[nn.Module, fx.GraphModule, Teacher] | None = None  # (copied, student graph, teacher)

    def __repr__(self) -> str:
        shown = {**self.options(), "teacher": None if self.teacher is None else type(self.teacher).__name__}
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def _teacher(self, graph: GraphInfo) -> Teacher:
        """The teacher for a student planned as ``graph``, traced on its example inputs (once per plan:
        another plan, of another model or batch, gets its own; each head keeps the one it was made with)."""
        source = graph.model if self.teacher is None else self.teacher
        if self._made is None or self._made[0] is not source or self._made[1] is not graph.traced:
            self._made = (source, graph.traced, Teacher(source, self.rename))
            self._made[2].trace(graph.inputs)
        return self._made[2]

    def _match(self, boundary: Boundary, graph: GraphInfo) -> tuple[tuple[str, ...], int] | str:
        if graph.traced is None:
            return "tandem needs the traced student graph (plan through splitfx.plan or convert)"
        return self._teacher(graph).match(graph.traced, boundary.nodes, [s for s, _ in boundary.parts])

    def unreadable(self, boundary: Boundary, graph: GraphInfo) -> str | None:
        found = self._match(boundary, graph)
        return found if isinstance(found, str) else None

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        found = self._match(boundary, graph)
        if isinstance(found, str):
            raise PlanError(f"tandem: {found}; pass a teacher of the student's topology, or rename= to map its "
                             "module names")
        nodes, steps = found
        return Rate(steps, nodes, self._teacher(graph))

    def local_loss(self, head: nn.Module, features: torch.Tensor, target: torch.Tensor, inputs: tuple) -> torch.Tensor:
        """What the planner costs: the same loss on a stand-in teacher value of the right size."""
        activity = head(features)
        return F.mse_loss(activity, torch.zeros_like(activity))

    def _percentile(self, heads: list[nn.Module]) -> float | None:
        """The percentile the targets are scaled by: ``"auto"`` is LTL's for a spiking student (rates
        in [0, 1]) and none for an ordinary one."""
        if self.percentile != "auto":
            return self.percentile
        return SPIKING_PERCENTILE if any(head.steps > 1 for head in heads) else None

    def losses(self, parts: SplitParts, inputs: tuple, target: torch.Tensor,
               h: tuple | None = None) -> Iterator[torch.Tensor]:
        heads = parts.heads[:len(parts.blocks) - (1 if parts.ends else 0)]
        last_use = {n: k for k, head in enumerate(heads) for n in head.teacher_nodes}
        # A pipeline stage holding only the last block reads no teacher value (and gets no inputs).
        values = heads[0].teacher.run(sorted(last_use), inputs) if heads else {}
        targets = {n: normalised(a, self._percentile(heads)) for n, a in values.items()}
        h, held = (inputs if h is None else h), []
        for k, block in enumerate(parts.blocks):
            if self.teacher_inputs and k > 0:
                before = parts.heads[k - 1]
                h = tuple(before.over_time(forced) for forced in held)
            out = block(*h)
            if parts.is_final(k):
                yield parts.loss_fn(out, target)
                continue
            outs = handed(out)
            parts.handing_over(k, outs)
            head = parts.heads[k]
            held = [targets[n] for n in head.teacher_nodes]
            for n in head.teacher_nodes:
                if last_use[n] == k:  # freed as soon as no later block reads it
                    del targets[n]
            wanted = parts.merges[k](*held)
            yield F.mse_loss(head(parts.merges[k](*outs)), wanted)
            h = tuple(t.detach() for t in outs)
            del outs, out, wanted
