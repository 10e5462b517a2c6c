"""``auglocal``: AugLocal (Ma, Wu, Ma, Zhang, Li, ICLR 2024).

Published: the aux net of the block ending at layer l (of L) is d layers sampled uniformly from the
layers after it, ``round(l + (L−l−1)/d · i)`` for i = 1..d (so the last layer of the network is
always the deepest), each a fresh, randomly initialised block with that layer's architecture, then
GAP → Linear. Depth is pyramidal: ``max(1, round(d·(1−c·t) + c·t))`` at relative depth t = l/L,
c = 0.5. Options: ``d`` (default 2, the README's ResNet-32 setting; it uses 3 on ResNet-110) and ``c``.
Python's ``round`` (halves to even), as the public code computes it; at d = 2 the pyramid keeps
depth 2 wherever two layers remain, at d = 3 it goes 3 → 2.

Departures, and why:
- "Layers" are the model's repeated units that splitfx finds in the graph (residual, transformer,
  inverted-residual blocks — :meth:`GraphInfo.repeated`): never a stem conv, a final norm or the
  classifier, which are not layers of the network in the paper's sense. l counts the repeated units
  before the cut; a unit the cut falls inside counts on neither side.
- Where a sampled layer expects another width or resolution than the features reaching it, a 1×1
  conv (stride where the resolution drops) or Linear adapter is inserted (the paper builds the
  sampled layer with that stride and width itself); where none fits (a cut inside a transformer
  block handing over attention tensors), a resampling bridge (:class:`~.heads.Resample`: pool to
  the layer's positions, Linear to its width), so the aux net keeps its depth at every cut.
- Fewer layers than d left after the cut: the aux net samples those there are; none: pool + Linear.
"""
from __future__ import annotations

from torch import nn

from .base import Boundary, GraphInfo, Recipe, RecipeTraits
from .copies import chain, fresh_copy
from .heads import pool_linear
from .predict import predict
from .registry import register_recipe
from .values import count, fraction


def pyramid_depth(d: int, c: float, t: float) -> int:
    """AugLocal's aux depth at relative depth t: ``max(1, round(d·(1−c·t) + c·t))``."""
    return max(1, round(d * (1 - c * t) + c * t))


def sampled(boundary: Boundary, graph: GraphInfo, d: int, c: float) -> list:
    """The repeated units AugLocal samples for the cut of ``boundary`` (in order)."""
    repeated = graph.repeated()
    before = sum(u.end <= boundary.position for u in repeated)
    after = graph.repeated_after(boundary.position)
    if not after:
        return []
    t = before / len(repeated)
    depth = min(pyramid_depth(d, c, t), len(after))
    last = before - 1  # index of the block's last layer among the repeated units
    n = len(after)
    picks = [round(last + n / depth * i) - before for i in range(1, depth + 1)]
    return [after[i] for i in dict.fromkeys(min(max(i, 0), n - 1) for i in picks)]


@register_recipe("auglocal")
class AugLocal(Recipe):
    paper = "Ma et al., ICLR 2024"
    traits = RecipeTraits(copies_layers=True)

    def __init__(self, d: int = 2, c: float = 0.5):
        self.d, self.c = count("d", d), fraction("c", c)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        units = sampled(boundary, graph, self.d, self.c)
        spec = graph.spec(boundary.shape, boundary.layout, boundary.input_shape)
        layers, shape, layout = chain(units, graph, spec, boundary.shape, boundary.input_shape, fresh_copy)
        return nn.Sequential(*layers, predict(boundary, graph, shape, layout, lambda n: pool_linear(shape, layout, n),
                                              light=True))
