"""What a local-learning recipe is: aux-head generator, local loss, training loop, per-step hooks.

A recipe sees the converted model only through :class:`SplitParts` (the blocks, the heads, the
final loss, the model for EMA sources), never the runtime's ``SplitModule``.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..passes.units import Unit

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Boundary:
    """What an aux head is generated from: the tensor handed over at the end of block ``index``."""

    index: int
    num_blocks: int
    shape: tuple
    dtype: torch.dtype
    layout: str
    num_classes: int
    input_shape: tuple
    position: int = 0  # where the cut is in the ordered graph
    parts: tuple = ()  # (shape, layout) of every tensor the cut hands over; shape/layout are their merge

    @property
    def depth(self) -> float:
        """0 at the first cut, 1 at the last (for per-depth schedules)."""
        return self.index / (self.num_blocks - 2) if self.num_blocks > 2 else 0.0


@dataclass
class GraphInfo:
    """What recipes that copy the model's own layers may look at."""

    model: nn.Module
    units: list[Unit] = field(default_factory=list)

    def units_after(self, position: int) -> list[Unit]:
        return [u for u in self.units if u.start >= position]


@dataclass(frozen=True)
class SplitParts:
    """What a recipe's loop runs: block k maps block k-1's output to its own (one tensor, or a tuple
    when its cut hands over several: :func:`handed`), ``merges[k]`` joins block k's handed-over
    tensors into what ``heads[k]`` reads, ``attached[k]`` is block k without the input detach
    (cascade recipes only), ``loss_fn`` trains the last block, ``model`` is the user's model."""

    blocks: Sequence[Callable[..., torch.Tensor]]
    heads: Sequence[nn.Module]
    loss_fn: LossFn
    model: nn.Module
    merges: Sequence[Callable[..., torch.Tensor]]
    attached: Sequence[Callable[..., torch.Tensor]] = ()


def handed(out: torch.Tensor | tuple) -> tuple[torch.Tensor, ...]:
    """A non-final block's output as the tuple of tensors its cut hands over."""
    return out if isinstance(out, tuple) else (out,)


class Recipe:
    """A recipe: one aux head per non-final block, a local loss, and the per-step loop.

    The default loop runs block k on the detached output of block k-1, yields its loss, and moves
    on; ``reaches(k)`` says which blocks loss k trains (gradient isolation as the method defines it).
    Subclasses register with ``@splitfx.register_recipe("name")``."""

    name = "base"
    paper = ""
    split = True  # False: the model is one block (E2E)
    cascade = False  # True: loss k also runs block k-1 on its input (needs ``SplitParts.attached``)
    needs_units = False  # True: make_head copies the model's own layers
    merge = "map"  # how a cut's several tensors join for the head: "map" or "vector" (recipes/merge.py)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        raise NotImplementedError(f"recipe {self.name!r} does not define make_head")

    def head_key(self, boundary: Boundary, graph: GraphInfo) -> Hashable:
        """Boundaries with equal keys get structurally identical heads (the planner probes one).
        Heads built from the model's own layers depend on the layers after the cut."""
        after = graph.units_after(boundary.position)[:1] if self.needs_units else ()
        return boundary.parts, boundary.shape, boundary.layout, tuple(u.name for u in after)

    def local_loss(self, head: nn.Module, features: torch.Tensor, target: torch.Tensor, inputs: tuple) -> torch.Tensor:
        return F.cross_entropy(head(features), target)

    def reaches(self, k: int) -> tuple[int, ...]:
        return (k,)

    def step_bytes(self, with_aux: np.ndarray, backbone: np.ndarray, k: int) -> float:
        """Predicted saved bytes while loss k is alive, from block costs over the chosen boundaries
        (``with_aux[i, j]``: blocks i..j plus the aux head at j; ``backbone``: without it)."""
        return float(with_aux[k, k + 1])

    def losses(self, parts: SplitParts, inputs: tuple, target: torch.Tensor) -> Iterator[torch.Tensor]:
        h = inputs
        last = len(parts.blocks) - 1
        for k, block in enumerate(parts.blocks):
            out = block(*h)
            if k == last:
                yield parts.loss_fn(out, target)
            else:
                yield self.local_loss(parts.heads[k], parts.merges[k](*handed(out)), target, inputs)
                h = tuple(t.detach() for t in handed(out))
            del out

    def after_step(self, parts: SplitParts) -> None:
        """Called once after each optimizer step: EMA copies follow their backbone layers."""
        for head in parts.heads:
            for ema, source in getattr(head, "ema_sources", lambda: ())():
                ema.update(parts.model.get_submodule(source))
