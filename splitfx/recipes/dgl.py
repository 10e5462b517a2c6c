"""``dgl``: Decoupled Greedy Learning (Belilovsky, Eickenberg, Oyallon, ICML 2020).

Published: aux net "MLP-SR": adaptive average pool to ⌈H/4⌉ → n × [1×1 conv C→C, BN, ReLU] →
adaptive average pool 2×2 → m × [Linear 4C→4C, BN1d, ReLU] → Linear → classes; cross-entropy.
Defaults n = m = 3, the official code's (its ImageNet script); options ``n``, ``m`` (n = m = 1 is the
cheapest setting the paper sweeps).

Departures, and why: blocks are placed by splitfx's planner (memory-balanced) instead of uniformly,
the point of splitfx; one optimizer for all blocks (DGL uses one per block; pass
``sm.block_parameters(k)`` + ``sm.heads[k].parameters()`` to your own optimizers to get that back);
token grids are read with the model's prefix tokens dropped, and a sequence with no grid as a 1×L
map, because the paper's net is defined on maps only.
"""
from __future__ import annotations

from torch import nn

from .base import Boundary, GraphInfo, Recipe
from .heads import MLPSR
from .predict import predict
from .registry import register_recipe
from .values import count


@register_recipe("dgl")
class DGL(Recipe):
    paper = "Belilovsky et al., ICML 2020"

    def __init__(self, n: int = 3, m: int = 3):
        self.n, self.m = count("n", n, 0), count("m", m, 0)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        spec = graph.spec(boundary.shape, boundary.layout, boundary.input_shape)
        return predict(boundary, graph, boundary.shape, boundary.layout,
                       lambda n: MLPSR(spec, boundary.shape, n, self.n, self.m))
