"""What a local-learning recipe is: aux-head generator, local loss, training loop, per-step hooks.

A recipe sees the converted model only through :class:`SplitParts` (the blocks, the heads, the
final loss, the model for EMA sources), never the runtime's ``SplitModule``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..passes.units import Unit
from .layout import Layout, MapSpec, map_spec
from .merge import MergeKind
from .task import Task, scoring

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Boundary:
    """What an aux head is generated from: the tensor handed over at the end of block ``index``."""

    index: int
    num_blocks: int
    shape: tuple
    dtype: torch.dtype
    layout: Layout
    num_classes: int
    input_shape: tuple
    position: int = 0  # where the cut is in the ordered graph
    parts: tuple = ()  # (shape, layout) of every tensor the cut hands over; shape/layout are their merge
    task: Task | None = None  # what the heads predict and the loss they are scored with (None: classes)
    nodes: tuple[str, ...] = ()  # the graph nodes (fx names) whose values the cut hands over

    @property
    def depth(self) -> float:
        """0 at the first cut, 1 at the last (for per-depth schedules)."""
        return self.index / (self.num_blocks - 2) if self.num_blocks > 2 else 0.0


@dataclass(frozen=True)
class Tail:
    """The model's own task head (what runs after its last repeated layer, to the output): it reads
    one tensor of ``shape``/``layout``; ``build()`` returns a fresh copy of it, weights copied."""

    shape: tuple
    layout: Layout
    build: Callable[[], nn.Module]


@dataclass
class GraphInfo:
    """What recipes may look at beyond one cut: the model's units, its task head (``tail``: found for
    recipes declaring ``copies_layers``; None where the graph has none), the traced graph the cuts'
    ``Boundary.nodes`` name, and the example inputs it was planned on (a teacher runs on them)."""

    model: nn.Module
    units: list[Unit] = field(default_factory=list)
    tail: Tail | None = None
    traced: fx.GraphModule | None = None
    inputs: tuple = ()

    def units_after(self, position: int) -> list[Unit]:
        return [u for u in self.units if u.start >= position]

    def repeated(self) -> list[Unit]:
        """The model's repeated layers: units that are composite modules (residual, transformer,
        inverted-residual blocks) of a class that occurs at least twice — not a stem conv, a final
        norm or a classifier head. Models with no such class fall back to leaf units of a repeated
        class (a plain conv stack)."""
        kinds = [type(self.model.get_submodule(u.name)) for u in self.units]
        composite = [next(self.model.get_submodule(u.name).children(), None) is not None for u in self.units]
        for need_children in (True, False):
            found = [u for u, kind, parent in zip(self.units, kinds, composite, strict=True)
                     if kinds.count(kind) >= 2 and (parent or not need_children)]
            if found:
                return found
        return []

    def repeated_after(self, position: int) -> list[Unit]:
        return [u for u in self.repeated() if u.start >= position]

    def spec(self, shape: Sequence[int], layout: Layout, input_shape: Sequence[int]) -> MapSpec:
        """How a tensor of ``shape`` becomes a map in this model (token grids from its prefix count)."""
        return map_spec(shape, layout, input_shape, self.model)


@dataclass(frozen=True)
class Held:
    """Part of what one loss keeps alive until its backward: ``times`` runs of block ``block``'s
    saved activations, with that block's aux head (or, for the last block, the final loss) when
    ``head``. The planner balances the sum over a loss's parts (:meth:`Recipe.held`)."""

    block: int
    times: float = 1.0
    head: bool = True


HandOver = Callable[[int, tuple[torch.Tensor, ...]], None]


@dataclass(frozen=True)
class SplitParts:
    """What a recipe's loop runs: block k maps block k-1's output to its own (one tensor, or a tuple
    when its cut hands over several: :func:`handed`), ``merges[k]`` joins block k's handed-over
    tensors into what ``heads[k]`` reads, ``attached[k]`` is block k without the input detach
    (cascade recipes only), ``loss_fn`` trains the last block, ``model`` is the user's model.

    A pipeline stage runs a slice of the blocks: ``ends`` is False where the last of them is not the
    model's last block (it trains through its aux head, and what it hands over goes to the next
    rank), and ``hand_over(k, tensors)`` is called at every cut with what block k hands over,
    before its loss is computed: the rank's send plugs in there."""

    blocks: Sequence[Callable[..., torch.Tensor]]
    heads: Sequence[nn.Module]
    loss_fn: LossFn
    model: nn.Module
    merges: Sequence[Callable[..., torch.Tensor]]
    attached: Sequence[Callable[..., torch.Tensor]] = ()
    ends: bool = True
    hand_over: HandOver | None = None

    def is_final(self, k: int) -> bool:
        """Whether block ``k`` is the model's last, trained by ``loss_fn`` on the model's output."""
        return self.ends and k == len(self.blocks) - 1

    def handing_over(self, k: int, tensors: tuple[torch.Tensor, ...]) -> None:
        """Block ``k`` hands ``tensors`` over (to :attr:`hand_over`, when set)."""
        if self.hand_over is not None:
            self.hand_over(k, tensors)


@dataclass(frozen=True)
class RecipeTraits:
    """What a recipe declares about itself, read by the planner, the runtime and the pipeline
    instead of guessed from its methods.

    ``split``: False for E2E (the model is one block). ``cascade``: loss k also runs block k−1 on
    its input (the loop reads ``SplitParts.attached``). ``uses_inputs``: its local losses read the
    model's inputs (InfoPro's reconstruction), so a pipeline sends them on. ``copies_layers``: its
    heads copy the model's own layers after the cut (the planner finds the model's units, and
    :meth:`Recipe.head_key` includes every layer after the cut). ``ema``: its heads keep EMA copies
    of backbone layers (:class:`Follows` modules), updated in :meth:`Recipe.after_step`; heads holding
    one from a recipe that does not declare it are refused when they are built.
    ``pipelined``: its loop runs on a slice of the blocks (honours ``SplitParts.ends``,
    ``hand_over`` and the ``h`` argument of :meth:`Recipe.losses`), so a pipeline may split it
    between ranks. ``merge``: how its heads read a cut's several tensors. ``predicts``: its heads
    predict the task's output (False for a teacher's activations), so the planner offers only the cuts
    the task's heads can read (:func:`~.predict.unreadable`). ``infers``: its heads take part in
    inference: it defines ``infer(parts, inputs)``, which ``SplitModule.forward`` and the ONNX export
    return instead of the model's own output (FFR's prediction and uncertainty), and
    ``fit_targets(heads, targets)``, called with a training set's targets before training."""

    split: bool = True
    cascade: bool = False
    uses_inputs: bool = False
    copies_layers: bool = False
    ema: bool = False
    pipelined: bool = True
    merge: MergeKind = MergeKind.MAP
    predicts: bool = True
    infers: bool = False


class Follows(nn.Module):
    """An aux module holding ``ema``, an EMA copy of the backbone layer named ``source`` (MAN's and
    MLAAN's heads); :meth:`Recipe.after_step` updates it from that layer after every step."""

    ema: nn.Module
    source: str


def ema_sources(head: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every EMA copy inside ``head``, with the name of the backbone layer it follows."""
    return [(m.ema, m.source) for m in head.modules() if isinstance(m, Follows)]


def handed(out: torch.Tensor | tuple) -> tuple[torch.Tensor, ...]:
    """A non-final block's output as the tuple of tensors its cut hands over."""
    return out if isinstance(out, tuple) else (out,)


class Recipe:
    """A recipe: one aux head per non-final block, a local loss, and the per-step loop.

    The default loop runs block k on the detached output of block k-1, yields its loss, and moves
    on; ``reaches(k, num_blocks)`` says which blocks loss k trains and ``aux_reaches(k, heads)``
    which aux modules (gradient isolation as the method defines it). ``traits`` declares what the
    rest of splitfx may rely on (:class:`RecipeTraits`). Options are the keyword arguments of
    ``__init__``, each kept as the attribute of the same name (:meth:`options`).
    Subclasses register with ``@splitfx.register_recipe("name")``.

    **The head-key contract.** ``head_key(boundary, graph)`` must capture everything that changes
    the structure of the head ``make_head`` builds there (its modules, their shapes, its loss's
    weights): the planner costs one head per distinct key and reuses that cost for every boundary
    with an equal key, so two boundaries with equal keys must get structurally identical heads
    (``tests/test_recipe_structure.py`` checks it for every registered recipe). A recipe whose heads
    depend on more than the default key reads must extend it."""

    name = "base"
    paper = ""
    traits = RecipeTraits()

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The recipe's options and their defaults: the keyword arguments of its ``__init__``."""
        if cls.__init__ is object.__init__:
            return {}
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def options(self) -> dict[str, Any]:
        """The options this instance was made with."""
        return {name: getattr(self, name, default) for name, default in self.option_defaults().items()}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        raise NotImplementedError(f"recipe {self.name!r} does not define make_head")

    def head_key(self, boundary: Boundary, graph: GraphInfo) -> Hashable:
        """Boundaries with equal keys get structurally identical heads (the planner probes one; see
        the class docstring). Heads may depend on the cut's depth (λ schedules) and, when built from
        the model's own layers, on which layers come after the cut and how many end before it
        (AugLocal's depth grows with the layers before the cut: a cut inside a unit and one at its
        end see the same layers after them, but not the same number before)."""
        if not self.traits.copies_layers:
            return boundary.parts, boundary.shape, boundary.layout, boundary.depth
        after = tuple(u.name for u in graph.units_after(boundary.position))
        ended = sum(u.end <= boundary.position for u in graph.units)
        return boundary.parts, boundary.shape, boundary.layout, boundary.depth, after, ended

    def unreadable(self, boundary: Boundary, graph: GraphInfo) -> str | None:
        """Why this recipe can build no head at ``boundary`` beyond what its traits say (the planner
        then offers no such cut, and says why when too few are left); None where it can."""
        return None

    def local_loss(self, head: nn.Module, features: torch.Tensor, target: torch.Tensor, inputs: tuple) -> torch.Tensor:
        """Head ``head``'s loss on ``features``: its prediction scored with the task's loss
        (cross-entropy on classes by default; :func:`~.task.scoring`)."""
        return scoring(head)(head(features), target)

    def reaches(self, k: int, num_blocks: int | None = None) -> tuple[int, ...]:
        """The blocks loss k trains (``num_blocks``, when given, for recipes whose rule depends on it)."""
        return (k,)

    def aux_reaches(self, k: int, heads: Sequence[nn.Module]) -> list[nn.Module]:
        """The aux modules loss k trains: head k (the last loss, the model's own head, trains none)."""
        return [heads[k]] if k < len(heads) else []

    def held(self, k: int, num_blocks: int) -> tuple[Held, ...]:
        """What loss ``k`` of ``num_blocks`` keeps alive: block k with its head. A recipe whose loss
        runs more (a cascade's block k−1) says so here, and the partition balances that sum; a loss
        may hold block k and block k−1 only."""
        return (Held(k),)

    def step_bytes(self, with_aux: np.ndarray, backbone: np.ndarray, k: int) -> float:
        """Predicted saved bytes while loss k is alive, from block costs over the chosen boundaries
        (``with_aux[i, j]``: blocks i..j plus the aux head at j; ``backbone``: without it)."""
        blocks = with_aux.shape[0] - 1
        return float(sum(h.times * (with_aux if h.head else backbone)[h.block, h.block + 1]
                         for h in self.held(k, blocks)))

    def losses(self, parts: SplitParts, inputs: tuple, target: torch.Tensor,
               h: tuple | None = None) -> Iterator[torch.Tensor]:
        """The step: one loss per block of ``parts``, in order; the caller runs each one's backward
        before asking for the next. ``h`` is what the first block takes: the model's ``inputs`` when
        None, a previous rank's hand-over on a later pipeline stage."""
        h = inputs if h is None else h
        for k, block in enumerate(parts.blocks):
            out = block(*h)
            if parts.is_final(k):
                yield parts.loss_fn(out, target)
            else:
                outs = handed(out)
                parts.handing_over(k, outs)
                yield self.local_loss(parts.heads[k], parts.merges[k](*outs), target, inputs)
                h = tuple(t.detach() for t in outs)
                del outs
            del out

    def after_step(self, parts: SplitParts) -> None:
        """Called once after each optimizer step: EMA copies follow their backbone layers. Only recipes
        declaring ``traits.ema`` have any (heads holding one otherwise are refused when built), so the
        others skip the walk over their heads' modules every step."""
        if not self.traits.ema:
            return
        for head in parts.heads:
            for ema, source in ema_sources(head):
                ema.update(parts.model.get_submodule(source))
