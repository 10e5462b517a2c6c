"""The loop of the recipes with a cascade path (``hpff``, ``mlaan``): a loss trains two neighbouring blocks.

As published (HPFF and MLAAN share InfoPro's code base), block k ≥ 1 is trained by
``wx·I_k + wy·C_k``: ``I_k`` the independent loss on ``B_k(x_k)`` (its input detached) and ``C_k``
the cascade loss on ``z_k = B_k(B_{k−1}(x_{k−1}))``, which trains blocks k−1 and k; block 0 has no
loss of its own and learns only through ``C_1``; the last block uses the model's own head on both
paths. Each path has its own aux head (:class:`CascadeHead`).

``local_losses`` yields one loss per block, and the published terms are grouped so that each loss
runs every block it needs once: **loss 0** is ``wy·C_1`` (blocks 0 and 1, head 1's cascade path);
**loss k** for 1 ≤ k < K−1 is ``wx·I_k + wy·C_{k+1}``: block k runs once on its detached input, its
output feeds head k's independent path and, without a detach, block k+1 and head k+1's cascade
path (blocks k and k+1); **the last loss** is the last block's independent term through the model's
own head. Every term of the published loss appears once, so the summed gradients, and the weights
after the step, are the published ones (a per-block ``step_each_block`` steps a block once no
later loss reaches it: :meth:`reaches`). MLAAN's last block has no independent term: its cascade
``C_{K−1}`` moves to the last loss, which runs block K−2 again on its detached input.

What a loss keeps alive is two neighbouring blocks and their heads (:meth:`Cascade.held`), not a
block twice beside its predecessor as in the public code, where ``I_k`` and ``C_k`` are computed
together (block k twice, block k−1 a third time); the planner balances exactly that
(:mod:`splitfx.passes.chain_partition`), each candidate cut's head probed as a later cut's (cut
0's is empty). Each block runs twice per step (block 0 once), and BatchNorm's running statistics
move once per run, as in the public code where they move two or three times. At K = 2 the first loss
holds both blocks, the whole network: the planner refuses that K for these recipes.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .base import Held, Recipe, RecipeTraits, SplitParts, handed
from .values import weight


class CascadeHead(nn.Module):
    """Head k ≥ 1 of a cascade recipe: ``independent`` reads ``B_k(x_k)``, ``cascade`` reads ``z_k``.
    Each has ``loss(features, target, image)``."""

    def __init__(self, independent: nn.Module, cascade: nn.Module):
        super().__init__()
        self.independent, self.cascade = independent, cascade

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.independent(x)


class Cascade(Recipe):
    traits = RecipeTraits(cascade=True, uses_inputs=True, pipelined=False)
    last_independent = True  # False (MLAAN): the last block keeps only the cascade loss, at weight 1

    def __init__(self, wx: float = 0.001, wy: float = 0.999):
        self.wx, self.wy = weight("wx", wx), weight("wy", wy)

    def reaches(self, k: int, num_blocks: int | None = None) -> tuple[int, ...]:
        if num_blocks is None:
            raise ValueError(f"recipe {self.name!r}: which blocks a loss reaches depends on num_blocks; pass it")
        last = num_blocks - 1
        if last == 0:
            return (0,)
        if k == last:
            return (last,) if self.last_independent or last == 1 else (last - 1, last)
        if k == last - 1 and not self.last_independent and last > 1:
            return (k,)
        return (k, k + 1) if k else (0, 1)

    def aux_reaches(self, k: int, heads: Sequence[nn.Module]) -> list[nn.Module]:
        last = len(heads)
        if k >= last:
            return []
        own = [heads[k].independent] if k else []
        return own + ([heads[k + 1].cascade] if k + 1 < last else [])

    def local_loss(self, head, features, target, inputs):
        """Both paths on the same features: what the planner probes for the aux cost."""
        if not isinstance(head, CascadeHead):
            return features.new_zeros(())
        return self.wx * head.independent.loss(features, target, inputs[0]) + \
            self.wy * head.cascade.loss(features, target, inputs[0])

    def held(self, k: int, num_blocks: int) -> tuple[Held, ...]:
        """Loss k holds the blocks :meth:`reaches` names, each once with its head (both paths, the
        planner's conservative figure), except block 0 and a block run again only as a cascade's
        input, whose heads are not run."""
        blocks = self.reaches(k, num_blocks)
        if len(blocks) == 1:
            return (Held(blocks[0]),)
        first, second = blocks
        ran_again = k == num_blocks - 1  # MLAAN's last loss runs block K−2 only to feed block K−1
        return Held(second), Held(first, head=bool(first) and not ran_again)

    def cascade_term(self, parts: SplitParts, z, target: torch.Tensor, image: torch.Tensor, k: int) -> torch.Tensor:
        """``C_k`` on ``z = B_k(B_{k−1}(·))``: head k's cascade path, or the model's own head on the
        last block (weight ``wy``, or 1 where the last block has no independent term)."""
        if k < len(parts.blocks) - 1:
            return self.wy * parts.heads[k].cascade.loss(parts.merges[k](*handed(z)), target, image)
        whole = not self.last_independent and len(parts.blocks) > 2
        return (1.0 if whole else self.wy) * parts.loss_fn(z, target)

    def losses(self, parts: SplitParts, inputs: tuple, target: torch.Tensor,
               h: tuple | None = None) -> Iterator[torch.Tensor]:
        """The whole model's step (a cascade is never split between pipeline ranks: ``h`` is None)."""
        blocks, last, image = parts.blocks, len(parts.blocks) - 1, inputs[0]
        if last == 0:
            yield parts.loss_fn(blocks[0](*inputs), target)
            return
        h = inputs
        for k in range(last):
            out = blocks[k](*h)
            loss = None
            if k:
                loss = self.wx * parts.heads[k].independent.loss(parts.merges[k](*handed(out)), target, image)
            if k + 1 < last or self.last_independent or last == 1:
                cascade = self.cascade_term(parts, parts.attached[k + 1](*handed(out)), target, image, k + 1)
                loss = cascade if loss is None else loss + cascade
            yield loss
            h_before, h = h, tuple(t.detach() for t in handed(out))
            del out, loss
        if self.last_independent or last == 1:
            yield self.wx * parts.loss_fn(blocks[last](*h), target)
        else:  # MLAAN: the last block's cascade, block K−2 run again on its detached input
            yield self.cascade_term(parts, parts.attached[last](*handed(blocks[last - 1](*h_before))), target, image,
                                    last)
