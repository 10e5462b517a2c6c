"""The loop of the recipes with a cascade path (``hpff``, ``mlaan``): loss k also trains block k−1.

As published (HPFF and MLAAN share InfoPro's code base), block k ≥ 1 is trained by
``wx·I_k + wy·C_k``: ``I_k`` the independent loss on ``B_k(x_k)`` (its input detached) and ``C_k``
the cascade loss on ``z_k = B_k(B_{k−1}(x_{k−1}))``, which trains blocks k−1 and k; block 0 has no
loss of its own and learns only through ``C_1``; the last block uses the model's own head on both
paths. Each path has its own aux head (:class:`CascadeHead`).

``local_losses`` yields one loss per block, so the rule here is: **loss 0 is the cascade term of
block 1's published loss** (``wy·C_1``, trains blocks 0 and 1 and head 1's cascade path), **loss 1
the independent term** (``wx·I_1``, block 1 and head 1's independent path), and loss k ≥ 2 the whole
published loss of block k. The losses sum to the published ones and give the same gradients; cut 0
has a parameter-free :class:`~.heads.NoHead`. ``reaches`` and ``aux_reaches`` say exactly this, and
``tests/checks.py`` observes it. Every block is forwarded twice or three times per step, as in the
public code; a step's activation memory is that of two consecutive blocks, which the plan's
per-block figures (simulated) include. The planner balances cuts on the backbone alone for these
recipes: every candidate cut is probed as cut 0, whose head is empty.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .base import Recipe, RecipeTraits, SplitParts, handed
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
        if num_blocks == 1:
            return (0,)
        return (0, 1) if k == 0 else (1,) if k == 1 else (k - 1, k)

    def aux_reaches(self, k: int, heads: Sequence[nn.Module]) -> list[nn.Module]:
        if k <= 1:
            return [heads[1].cascade if k == 0 else heads[1].independent] if len(heads) > 1 else []
        return [heads[k]] if k < len(heads) else []

    def local_loss(self, head, features, target, inputs):
        """Both paths on the same features: what the planner probes for the aux cost."""
        if not isinstance(head, CascadeHead):
            return features.new_zeros(())
        return self.wx * head.independent.loss(features, target, inputs[0]) + \
            self.wy * head.cascade.loss(features, target, inputs[0])

    def step_bytes(self, with_aux: np.ndarray, backbone: np.ndarray, k: int) -> float:
        """Loss 0 holds blocks 0 and 1 and head 1's cascade path, loss 1 block 1 and its head; loss
        k ≥ 2 block k twice (both paths) and block k−1's activations."""
        if k <= 1:
            return float(with_aux[1, 2] + (backbone[0, 1] if k == 0 else 0))
        return float(2 * with_aux[k, k + 1] + backbone[k - 1, k])

    def final_loss(self, parts: SplitParts, out, cascaded, target: torch.Tensor, k: int) -> torch.Tensor:
        """The last block's loss: both paths through the model's own head (k ≥ 2), the independent
        path alone at k = 1 (its cascade is loss 0)."""
        if k == 1:
            return self.wx * parts.loss_fn(out, target)
        if not self.last_independent:
            return parts.loss_fn(cascaded, target)
        return self.wx * parts.loss_fn(out, target) + self.wy * parts.loss_fn(cascaded, target)

    def losses(self, parts: SplitParts, inputs: tuple, target: torch.Tensor,
               h: tuple | None = None) -> Iterator[torch.Tensor]:
        """The whole model's step (a cascade is never split between pipeline ranks: ``h`` is None)."""
        blocks, last, image = parts.blocks, len(parts.blocks) - 1, inputs[0]
        if last == 0:
            yield parts.loss_fn(blocks[0](*inputs), target)
            return
        out = blocks[0](*inputs)
        z = parts.attached[1](*handed(out))  # block 1 on block 0's output, gradient reaching both
        if last == 1:
            yield self.wy * parts.loss_fn(z, target)
        else:
            yield self.wy * parts.heads[1].cascade.loss(parts.merges[1](*handed(z)), target, image)
        del z
        prev, h = inputs, tuple(t.detach() for t in handed(out))
        for k in range(1, last + 1):
            out = blocks[k](*h)
            # Block k without its input detach, on block k−1 run again: gradient reaches both.
            cascaded = parts.attached[k](*handed(blocks[k - 1](*prev))) if k > 1 else None
            if k == last:
                yield self.final_loss(parts, out, cascaded, target, k)
            else:
                merge, head = parts.merges[k], parts.heads[k]
                loss = self.wx * head.independent.loss(merge(*handed(out)), target, image)
                if cascaded is not None:
                    loss = loss + self.wy * head.cascade.loss(merge(*handed(cascaded)), target, image)
                yield loss
                prev, h = h, tuple(t.detach() for t in handed(out))
            del out, cascaded
