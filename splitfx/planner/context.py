"""What ``convert`` reuses from planning: the traced graph, its cost probe, the chosen cuts and blocks."""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from ..passes.cost import Probe
from ..passes.cuts import Cut, Schedule
from ..recipes.base import Boundary, GraphInfo, Recipe, SplitParts


@dataclass
class PlanContext:
    """Planner internals kept on ``SplitPlan.context`` (never in its JSON view)."""

    model: nn.Module
    gm: fx.GraphModule
    probe: Probe
    sched: Schedule
    recipe: Recipe
    graph: GraphInfo
    boundaries: list[Boundary]  # one per chosen cut
    cuts: list[Cut]  # the chosen cuts
    block_nodes: list[list[fx.Node]]  # the fx nodes each block runs (free nodes included)
    parts: SplitParts  # the emitted blocks, heads and merges the plan was measured with
