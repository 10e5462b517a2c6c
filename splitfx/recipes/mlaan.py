"""``mlaan``: Multilaminar Leap Augmented Auxiliary Network (Zhang et al., 2024).

Published (public code, CIFAR): MLM, the independent + cascade paths of HPFF (:mod:`.cascade`)
with linear heads (GAP → Linear), (wx, wy) = (0.001, 0.999); LAM, the cascade output running
through copies of hand-picked *later* backbone blocks ("leap"): up to four, mostly stage
transitions, always ending at the network's last layer (ResNet-32, K = 8, first cut:
``[[2,0],[3,0],[3,2],[3,4]]``), initialised from the backbone's weights, the first leap layer summed
with its EMA copy, then GAP → Linear. Block 0 has no loss of its own; the last block keeps only the
cascade loss (weight 1). EMA momentum 0.999 (the network's default). Options: ``wx``, ``wy``,
``momentum``, ``leap`` (most leap layers, default 4), ``recompute``.

Departures, and why:
- Leap layers are chosen from the model's repeated units after the cut (:func:`leap_units`), not by
  hand: the stage transitions (units that change the tensor's shape) nearest the cut, then units
  evenly spaced over the last stage, up to ``leap`` in all, always ending at the last unit.
- The published terms are grouped as HPFF's (:mod:`.cascade`), the last block's cascade in the last
  loss. K = 2, where the published method is one cascade loss through both blocks (E2E), is refused
  by the planner; with ``split_points`` giving two blocks, loss 1 keeps the independent path
  (``wx``) so each block has a loss.
- ``recompute=True`` (default): each leap copy (and the EMA copy) is recomputed in backward on its
  own (:mod:`.recompute`), as MAN's copies are: the same outputs and gradients, but the head keeps
  the copies' outputs instead of their activations, which at a stage-1 cut of an ImageNet ResNet
  (copies of every later stage transition at the cut's resolution) weigh more than the two blocks
  the loss trains. Backward holds one copy's activations at a time.
- Every EMA copy is updated after every step (the public code updates only the last one on CIFAR),
  and its ``--momentum`` default of 1.0 (an EMA that never moves) is refused.
- A leap layer expecting another shape than the features reaching it gets an adapter
  (:func:`~.copies.bridge`: 1×1 conv / Linear, or a resampling bridge where none fits).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..passes.units import Unit
from .base import Boundary, Follows, GraphInfo, RecipeTraits
from .cascade import Cascade, CascadeHead
from .copies import EMA, bridge, chain, weight_copy
from .heads import NoHead, Scored, pool_linear
from .layout import follow
from .predict import predict
from .recompute import runner
from .registry import register_recipe
from .values import count, flag
from .values import momentum as check_momentum


def uniform(units: Sequence[Unit], n: int) -> list[Unit]:
    """``n`` of ``units`` evenly spaced, ending at the last (AugLocal's ``round(l + (L−l−1)/d · i)``
    with l = −1: the ResNet-32 pick of two from ``3.1 … 3.4`` is ``3.2, 3.4``, as MLAAN's)."""
    n = min(n, len(units))
    return [units[round(-1 + len(units) / n * i)] for i in range(1, n + 1)] if n > 0 else []


def leap_units(after: Sequence[Unit], leap: int = 4) -> list[Unit]:
    """MLAAN's leap chain from the repeated units after a cut (see module docstring): the nearest
    stage transitions (units that change the tensor's shape), then units evenly spaced over the last
    stage ending at the last unit, then over the rest if the last stage is short; ``leap`` at most."""
    if not after:
        return []
    steps = [i for i, u in enumerate(after[:-1]) if u.in_shape != u.out_shape]
    chosen = [after[i] for i in steps[:leap - 1]]
    chosen += uniform(after[steps[-1] + 1 if steps else 0:], leap - len(chosen))
    rest = [u for u in after if u not in chosen]
    chosen += uniform(rest, leap - len(chosen))
    return sorted(chosen, key=lambda u: u.start)


class Leap(Follows):
    """LAM: ``bridge`` → (learnable copy + EMA copy of the first leap layer) → copies of the rest →
    GAP → Linear. With ``recompute``, each copy is :func:`~.recompute.recomputed` on its own."""

    def __init__(self, source: str, first: nn.Module, momentum: float, bridge: nn.Module, rest: nn.Sequential,
                 classifier: nn.Module, recompute: bool = True):
        super().__init__()
        self.source = source
        self.bridge = bridge
        self.first = weight_copy(first)
        self.ema = EMA(first, momentum)
        self.rest = rest
        self.classifier = classifier
        self.recompute = recompute

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        run = runner(self.recompute)
        z = self.bridge(z)
        z = run(self.first, z) + run(self.ema, z)
        for layer in self.rest:
            z = run(layer, z)
        return self.classifier(z)


@register_recipe("mlaan")
class MLAAN(Cascade):
    paper = "Zhang et al., 2024"
    traits = RecipeTraits(cascade=True, uses_inputs=True, copies_layers=True, ema=True, pipelined=False)
    last_independent = False

    def __init__(self, wx: float = 0.001, wy: float = 0.999, momentum: float = 0.999, leap: int = 4,
                 recompute: bool = True):
        super().__init__(wx, wy)
        self.momentum, self.leap = check_momentum(momentum), count("leap", leap)
        self.recompute = flag("recompute", recompute)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        if boundary.index == 0:
            return NoHead()
        independent = Scored(self.pooled(boundary, graph, boundary.shape, boundary.layout))
        return CascadeHead(independent, Scored(self.leap_net(boundary, graph)))

    def leap_net(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        shape = boundary.input_shape
        units = leap_units(graph.repeated_after(boundary.position), self.leap)
        if not units:
            return self.pooled(boundary, graph, boundary.shape, boundary.layout)
        first, hw = units[0], shape[-2:]
        spec = graph.spec(boundary.shape, boundary.layout, shape)
        want = follow(first.in_shape, hw, boundary.shape, boundary.layout)
        link = bridge(spec, boundary.shape, boundary.layout, first.in_shape, want)
        layout = follow(first.out_shape, hw, first.in_shape, want)
        layers, out, out_layout = chain(units[1:], graph, graph.spec(first.out_shape, layout, shape), first.out_shape,
                                        shape, weight_copy)
        return Leap(first.name, graph.model.get_submodule(first.name), self.momentum, link, nn.Sequential(*layers),
                    self.pooled(boundary, graph, out, out_layout), self.recompute)

    @staticmethod
    def pooled(boundary: Boundary, graph: GraphInfo, shape, layout) -> nn.Module:
        """GAP → Linear to the classes, or the task's head (:func:`~.predict.predict`)."""
        return predict(boundary, graph, shape, layout, lambda n: pool_linear(shape, layout, n), light=True)
