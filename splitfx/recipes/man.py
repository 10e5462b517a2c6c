"""``man``: Momentum Auxiliary Network (Su et al., ECCV 2024; MAN++ 2026).

At each cut the aux input is ``y = s·LB(x) + (2−s)·EMA(x)``: LB a learnable copy of the next layer
of the backbone (initialised from its weights), EMA an exponential moving average of that same
backbone layer (buffers, θ ← m·θ + (1−m)·θ_next after every step, m = 0.995), s a learnable scalar
starting at 1 (MAN++). Then the InfoPro heads and loss on ``y``.

Departures: "the next block" is the next layer (unit) of the backbone, not the whole next
gradient-isolated block, so the aux cost stays one layer whatever K is; for ViTs LB is that one
transformer block (MAN++ copies two). The public code's ``--momentum`` default of 1.0 (an EMA that
never moves) is rejected. Where the cut falls inside a layer, the next whole layer is used behind a
1×1 conv / Linear adapter; with no layer after the cut, the head is InfoPro's alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Boundary, GraphInfo
from .copies import EMA, weight_copy
from .heads import adapter
from .infopro import InfoPro, InfoProHead
from .layout import infer_layout
from .registry import register_recipe


class MomentumHead(nn.Module):
    def __init__(self, source: str, module: nn.Module, head: nn.Module, momentum: float, bridge: nn.Module):
        super().__init__()
        self.source = source
        self.bridge = bridge
        self.lb = weight_copy(module)
        self.ema = EMA(module, momentum)
        self.scale = nn.Parameter(torch.ones(()))
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bridge(x)
        return self.scale * self.lb(x) + (2 - self.scale) * self.ema(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def loss(self, features, target, image):
        return self.head.loss(self.features(features), target, image)

    def ema_sources(self):
        return [(self.ema, self.source)]


@register_recipe("man")
class MAN(InfoPro):
    paper = "Su et al., ECCV 2024 (MAN), MAN++ 2026"
    needs_units = True

    def __init__(self, momentum: float = 0.995):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"MAN's EMA momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        hw = boundary.input_shape[-2:]
        for unit in graph.units_after(boundary.position):
            bridge = adapter(boundary.shape, boundary.layout, unit.in_shape, infer_layout(unit.in_shape, hw))
            if bridge is not None:
                layout = infer_layout(unit.out_shape, hw)
                head = InfoProHead(layout, unit.out_shape, boundary.input_shape, boundary.num_classes, boundary.depth,
                                   False)
                return MomentumHead(unit.name, graph.model.get_submodule(unit.name), head, self.momentum, bridge)
        return super().make_head(boundary, graph)
