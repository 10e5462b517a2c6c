"""``auglocal``: AugLocal (Ma, Wu, Ma, Zhang, Li, ICLR 2024).

The aux net of the block ending at a cut is built from *architecture copies* of layers sampled
uniformly from the layers after the cut (``round(n·i/d)``, i = 1..d, so the last layer of the model
is always the deepest), each freshly initialised, then GAP → Linear. Depth is pyramidal: d shrinks
linearly from ``max_depth`` at the first cut to half of it at the last (coefficient 0.5).

Departures: "layers" are the units splitfx finds in this very graph (residual / transformer blocks,
stem layers); when a sampled layer expects another width or resolution than the features reaching
it, a 1×1 conv (stride where the resolution drops) or Linear adapter is inserted, and layers no
adapter fits are skipped; ``max_depth`` defaults to 2 to keep aux compute modest. Cuts with no
layer after them fall back to pool + Linear.
"""
from __future__ import annotations

from torch import nn

from .base import Boundary, GraphInfo, Recipe
from .copies import fresh_copy
from .heads import PoolLinear, adapter
from .layout import channels, infer_layout
from .registry import register_recipe


def sampled_chain(boundary: Boundary, graph: GraphInfo, units, fresh) -> tuple[list[nn.Module], tuple, str]:
    """Modules running ``units`` one after another from the boundary tensor, with adapters."""
    hw = boundary.input_shape[-2:]
    shape, layout = boundary.shape, boundary.layout
    layers: list[nn.Module] = []
    for unit in units:
        want = infer_layout(unit.in_shape, hw)
        bridge = adapter(shape, layout, unit.in_shape, want)
        if bridge is None:
            continue
        layers += [bridge, fresh(graph.model.get_submodule(unit.name))]
        shape, layout = unit.out_shape, infer_layout(unit.out_shape, hw)
    return [m for m in layers if not isinstance(m, nn.Identity)], shape, layout


@register_recipe("auglocal")
class AugLocal(Recipe):
    paper = "Ma et al., ICLR 2024"
    needs_units = True

    def __init__(self, max_depth: int = 2, pyramid: float = 0.5):
        self.max_depth, self.pyramid = max_depth, pyramid

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        after = graph.units_after(boundary.position)
        depth = max(1, round(self.max_depth * (1 - self.pyramid * boundary.depth)))
        depth = min(depth, len(after))
        picks = list(dict.fromkeys(after[round(len(after) * i / depth) - 1] for i in range(1, depth + 1)))
        layers, shape, layout = sampled_chain(boundary, graph, picks, fresh_copy)
        return nn.Sequential(*layers, PoolLinear(layout, channels(shape, layout), boundary.num_classes))
