"""``Split``: a model split into blocks, the value the planner hands to the runtime.

The planner emits every block, aux head and merge of the split it chooses and measures one step of
them; ``SplitModule.from_split`` turns the same objects into the trainable module, as
``torch.distributed.pipelining`` builds a stage from its ``Pipe``. It lives beside the recipes
because both the planner and the runtime read it, and the runtime never imports the planner.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from ..base.errors import ArgumentError
from ..base.report import SplitPlan
from ..passes.cuts import Cut
from .base import Boundary, GraphInfo, LossFn, Recipe, ema_sources
from .task import Task, carry_criterion


@dataclass(frozen=True, eq=False)
class Split:
    """The chosen blocks of one model and everything that runs them, with the :class:`SplitPlan`
    that reports them. Block ``k`` runs ``block_nodes[k]`` of ``traced`` between ``cuts[k-1]`` and
    ``cuts[k]`` and trains ``block_params[k]``; ``heads[k]`` (built for ``boundaries[k]``) reads
    ``merges[k]`` of what it hands over. ``attached`` are the blocks without their input detach
    (cascade recipes only). The blocks hold no state: they call the user's modules."""

    plan: SplitPlan
    traced: fx.GraphModule  # the whole model bound to the user's modules (RepL's surrogates in ``repl``)
    recipe: Recipe
    graph: GraphInfo  # the model's layers, as heads that copy them saw them
    boundaries: tuple[Boundary, ...]  # one per cut
    cuts: tuple[Cut, ...]
    block_nodes: tuple[tuple[fx.Node, ...], ...]
    baked: Mapping[str, object]  # constants one block computes and another reads (see passes/emit.py)
    blocks: tuple[fx.GraphModule, ...]
    attached: tuple[fx.GraphModule, ...]
    heads: tuple[nn.Module, ...]
    merges: tuple[nn.Module, ...]
    block_params: tuple[tuple[nn.Parameter, ...], ...]
    outputs: object  # the model's output on the example inputs, as fake tensors
    task: Task  # what the heads predict, and the loss they and the last block train with

    @property
    def model(self) -> nn.Module:
        """The user's model the blocks call."""
        return self.traced.get_submodule("model")

    def with_new_heads(self, loss_fn: LossFn | None = None) -> Split:
        """The same split with freshly built aux heads: a second module converted from one plan must
        not train the first one's heads. ``loss_fn`` (given) replaces the task's loss."""
        split = self
        if loss_fn is not None:
            task = dataclasses.replace(self.task, loss_fn=loss_fn)
            split = dataclasses.replace(self, task=task, boundaries=tuple(dataclasses.replace(b, task=task)
                                                                           for b in self.boundaries))
        return dataclasses.replace(split, heads=make_heads(split.recipe, split.boundaries, split.graph, split.model))


def make_heads(recipe: Recipe, boundaries: Sequence[Boundary], graph: GraphInfo,
               model: nn.Module) -> tuple[nn.Module, ...]:
    """``recipe``'s aux head for each boundary, on the device, in the floating dtype and in the
    train/eval mode of ``model``'s parameters (a model without floating parameters: CPU, float32)."""
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.float32)
    heads = tuple(carry_criterion(recipe.make_head(b, graph)).to(device=device, dtype=dtype).train(model.training)
                  for b in boundaries)
    following = [k for k, head in enumerate(heads) if ema_sources(head)]
    if following and not recipe.traits.ema:
        raise ArgumentError(f"recipe {recipe.name!r} builds aux heads holding EMA copies of backbone layers (at "
                            f"cuts {following}) but does not declare them: set traits = RecipeTraits(ema=True, "
                            "...) on it, so a pipeline can refuse stages that would need those layers' weights")
    return heads
