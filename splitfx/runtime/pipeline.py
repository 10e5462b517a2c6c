"""One pipeline rank's share of a :class:`SplitModule`: blocks ``[start, end)`` and their aux heads.

No gradient crosses a cut, so block k at step t needs only block k−1's forward at step t. A rank
receives the detached tensors its first block takes (and the targets), runs each of its blocks
forward, its local loss and backward, sends its last block's output on *before* that block's
backward, and steps its own optimizer: the next rank already works on step t while this one finishes
it and starts t+1. The weights equal those of one process running ``train_step`` over the same
batches, bit for bit on CPU, for every recipe whose loss k trains block k alone with the default loop.

Cascade recipes (a loss trains two neighbouring blocks: ``hpff``, ``mlaan``) would need a gradient sent back
at every stage boundary, and EMA copies of a later block's layer (``man``, ``mlaan``) would need that
layer's weights sent back after every step; both are refused for pipelines. They run with data
parallelism (one stage), where every rank holds every block.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from ..base.errors import DistributedError
from ..passes.names import PREFIX
from ..passes.replay import one_draw_per_step
from ..recipes.base import SplitParts, ema_sources, handed
from .placement import place, stage_tensors, unused_tensors
from .split_module import SplitModule

Send = Callable[[tuple[torch.Tensor, ...]], None]


def refusal(sm: SplitModule, ranges: Sequence[tuple[int, int]]) -> str | None:
    """Why ``sm`` cannot be trained as a pipeline over ``ranges`` of blocks, or None."""
    recipe = sm.recipe
    if len(ranges) == 1:
        return None
    if recipe.traits.cascade:
        return (f"recipe {recipe.name!r} is a cascade: a loss trains two neighbouring blocks, so every stage "
                "boundary would need a gradient sent back to the previous rank, which the pipeline never does. Train "
                "it with data parallelism (--stages 1: every rank holds every block), or pipeline a recipe whose loss "
                "k trains block k alone (linear, dgl, infopro, auglocal)")
    if any(tuple(recipe.reaches(k, sm.num_blocks)) != (k,) for k in range(sm.num_blocks)):
        return (f"recipe {recipe.name!r}: some loss trains more than its own block, which would need a gradient "
                "sent between ranks; train it with data parallelism (--stages 1)")
    if not recipe.traits.pipelined:
        return (f"recipe {recipe.name!r} runs its own training loop, which it declares cannot be split between "
                "ranks (RecipeTraits.pipelined); train it with data parallelism (--stages 1)")
    for a, b in ranges:
        mine = {id(t) for t in stage_tensors(sm, range(a, b))}
        for k in range(a, min(b, len(sm.heads))):
            for _, source in ema_sources(sm.heads[k]):
                if any(id(p) not in mine for p in sm.get_submodule(PREFIX + source).parameters()):
                    return (f"recipe {recipe.name!r}: aux head {k} keeps an EMA copy of layer {source!r}, which "
                            f"another stage trains; the pipeline would have to send its weights back after every "
                            f"step. Train {recipe.name!r} with data parallelism (--stages 1), or pipeline a recipe "
                            "without EMA copies (infopro is MAN without them)")
    return None


def check_pipeline(sm: SplitModule, ranges: Sequence[tuple[int, int]]) -> None:
    """Refuse (before any training) a pipeline these blocks cannot run."""
    if len(ranges) > sm.num_blocks:
        raise DistributedError(f"{len(ranges)} stages need at least as many blocks and the model has "
                               f"{sm.num_blocks}: give --blocks ≥ {len(ranges)} or fewer --stages")
    why = refusal(sm, ranges)
    if why is not None:
        raise DistributedError(why)


class Stage:
    """Blocks ``[start, end)`` of ``sm`` (all of them for data parallelism alone)."""

    def __init__(self, sm: SplitModule, start: int, end: int):
        self.sm, self.start, self.end = sm, start, end
        self.whole = start == 0 and end == sm.num_blocks
        self.last = end == sm.num_blocks
        self.needs_inputs = sm.recipe.traits.uses_inputs
        own_heads = [sm.heads[k] for k in range(start, min(end, len(sm.heads)))]
        self.parts = sm.parts() if self.whole else SplitParts(
            sm.blocks[start:end], own_heads, sm.loss_fn, sm.model, sm.merges[start:end], ends=self.last)
        self._tensors: list[torch.Tensor] | None = None

    @property
    def blocks(self) -> range:
        return range(self.start, self.end)

    @property
    def takes(self) -> int:
        """How many tensors this stage's first block takes (0: the model's inputs)."""
        return len(self.sm.plan.blocks[self.start - 1].output_shapes) if self.start else 0

    def tensors(self) -> list[torch.Tensor]:
        """The parameters and buffers this stage holds (the first stage also those nothing reads)."""
        if self._tensors is None:
            extra = unused_tensors(self.sm) if self.start == 0 else []
            self._tensors = [*stage_tensors(self.sm, self.blocks), *extra]
        return self._tensors

    def place(self, device: torch.device | str) -> None:
        """Keep this stage's tensors (on ``device``); every other one becomes ``meta``."""
        place(self.sm, self.tensors(), device)
        self._tensors = None

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This stage's parameters, in the order of ``sm.named_parameters()``."""
        mine = {id(t) for t in self.tensors()}
        return [(n, p) for n, p in self.sm.named_parameters() if self.whole or id(p) in mine]

    def reach_counts(self) -> dict[int, int]:
        """id(parameter) → how many losses of a step give it a gradient (data-parallel hooks wait for all)."""
        counts: dict[int, int] = {}
        sm, heads = self.sm, list(self.sm.heads)
        for j in self.blocks:
            for k in sm.recipe.reaches(j, sm.num_blocks):
                for p in sm.block_parameters(k):
                    counts[id(p)] = counts.get(id(p), 0) + 1
            aux = sm.recipe.aux_reaches(j, heads)
            for p in {id(p): p for m in aux for p in m.parameters()}.values():
                counts[id(p)] = counts.get(id(p), 0) + 1
        return counts

    def grad_order(self) -> list[list[nn.Parameter]]:
        """Per block, the order its gradients become ready: its aux head's, then its own, each backwards."""
        order = []
        for k in self.blocks:
            head = list(self.sm.heads[k].parameters()) if k < len(self.sm.heads) else []
            order.append([*reversed(head), *reversed(self.sm.block_parameters(k))])
        return order

    def losses(self, h: tuple, target: torch.Tensor, inputs: tuple, send: Send | None = None):
        """Yield this stage's losses in order: the recipe's own loop (:meth:`Recipe.losses`) over this
        stage's blocks, the last block's handed-over tensors going to ``send`` before its loss is
        computed. A train-only random call draws once per stage (each process has its own
        random-number stream)."""
        parts = self.parts
        if send is not None:
            last = len(parts.blocks) - 1
            parts = replace(parts, hand_over=lambda k, outs: send(outs) if k == last else None)
        with one_draw_per_step():
            yield from self.sm.recipe.losses(parts, inputs, target, h if self.start else None)

    def after_step(self) -> None:
        """The recipe's post-step hook on this stage's heads (EMA copies of its own layers)."""
        self.sm.recipe.after_step(self.sm.parts() if self.whole else self.parts)

    @torch.no_grad()
    def forward(self, h: tuple) -> tuple | torch.Tensor:
        """Inference through this stage's blocks: the tensors to hand on, or the model's output."""
        out = h
        for k in self.blocks:
            out = self.sm.blocks[k](*h)
            h = handed(out)
        return out if self.last else h
