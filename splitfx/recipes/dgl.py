"""``dgl``: Decoupled Greedy Learning (Belilovsky, Eickenberg, Oyallon, ICML 2020).

Aux net "MLP-SR": adaptive average pool to ⌈H/4⌉ → n × [1×1 conv, BN, ReLU] → adaptive average
pool 2×2 → m × [Linear 4C→4C, BN1d, ReLU] → Linear → classes; cross-entropy.

Departures: n = m = 1 by default (the paper sweeps them); blocks are placed by splitfx's planner
(memory-balanced) instead of uniformly; one optimizer for all blocks (DGL uses one per block; pass
``sm.block_parameters(k)`` + ``sm.heads[k].parameters()`` to your own optimizers to get that back);
token boundaries are reshaped to their square grid first."""
from __future__ import annotations

from torch import nn

from .base import Boundary, GraphInfo, Recipe
from .heads import MLPSR
from .registry import register_recipe


@register_recipe("dgl")
class DGL(Recipe):
    paper = "Belilovsky et al., ICML 2020"

    def __init__(self, n: int = 1, m: int = 1):
        self.n, self.m = n, m

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        return MLPSR(boundary.layout, boundary.shape, boundary.num_classes, self.n, self.m)
