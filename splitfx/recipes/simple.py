"""The baselines: ``e2e`` (no split) and ``linear`` (pool + one Linear per cut)."""
from __future__ import annotations

from torch import nn

from .base import Boundary, GraphInfo, Recipe, RecipeTraits
from .heads import PoolLinear
from .layout import channels
from .merge import MergeKind
from .predict import predict
from .registry import register_recipe


@register_recipe("e2e")
class E2E(Recipe):
    """Ordinary end-to-end backpropagation through the whole model, behind the same API (one block)."""

    paper = "baseline"
    traits = RecipeTraits(split=False)


@register_recipe("linear")
class Linear(Recipe):
    """Global average pool + one Linear per cut: the cheapest supervised head.

    Paper: the greedy layer-wise baseline (Belilovsky et al., ICML 2019, "Greedy layerwise learning
    can scale to ImageNet") reduced to a linear probe. Departure: no hidden layers at all; it is
    splitfx's default because it costs almost no memory or FLOPs."""

    paper = "Belilovsky et al. 2019, linear-probe variant"

    traits = RecipeTraits(merge=MergeKind.VECTOR)  # several tensors: pool each, concatenate

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        def vector(n: int) -> nn.Module:
            return PoolLinear(boundary.layout, channels(boundary.shape, boundary.layout), n)

        return predict(boundary, graph, boundary.shape, boundary.layout, vector, light=True)
