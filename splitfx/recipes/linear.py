"""``linear``: global average pool + one linear classifier per cut.

The cheapest supervised head; it is DGL's head with zero hidden layers. Not from one paper: it is
the greedy layer-wise baseline (Belilovsky et al., ICML 2019, "Greedy layerwise learning can scale
to ImageNet") reduced to a linear probe, and splitfx's default because it costs almost no memory
or FLOPs."""
from __future__ import annotations

import torch
from torch import nn

from .base import Boundary, Recipe
from .layout import channels, pool


class PoolLinear(nn.Module):
    def __init__(self, layout: str, in_channels: int, num_classes: int):
        super().__init__()
        self.layout = layout
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(pool(x, self.layout))


class Linear(Recipe):
    name = "linear"
    paper = "Belilovsky et al. 2019 (greedy layer-wise learning), linear probe variant"

    def make_head(self, boundary: Boundary) -> nn.Module:
        return PoolLinear(boundary.layout, channels(boundary.shape, boundary.layout), boundary.num_classes)
