"""Deep supervision: the control that tells the detach's effect from the auxiliary losses' own.

The recipe's heads stay at the same cuts with the same losses, but nothing is detached: the blocks run
one after another on what the one before hands over, every head's loss and the model's own are summed
into one loss, and its one backward sends each head's gradient through every block before it. The
blocks are not isolated, so the step keeps E2E's activations (and the heads') alive. If this control
matches the local run, the heads, not the isolation, explain its accuracy; if it matches E2E, the
isolation costs what the local run loses.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ..base.errors import ArgumentError
from .base import Recipe, SplitParts, handed


def check_supervisable(recipe: Recipe) -> None:
    """Refuse a recipe whose step is not one head per block on that block's output: a cascade (its loss
    already runs two blocks), heads that take part in inference, or a teacher's targets."""
    if recipe.traits.cascade or recipe.traits.infers or not recipe.traits.predicts:
        raise ArgumentError(f"deep supervision (--no-detach, accuracy's --controls): recipe {recipe.name!r} runs "
                            "its own step (cascade, predicting heads or a teacher), so it has no deep-supervised "
                            "twin; use one whose heads each read one block's output (linear, dgl, infopro, "
                            "auglocal, man, glcan)")


def supervised_losses(recipe: Recipe, parts: SplitParts, inputs: tuple, target: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield one loss: the model's loss plus every head's local loss, over ``parts.attached`` (the
    blocks without their input detach)."""
    check_supervisable(recipe)
    total, h = None, inputs
    for k, block in enumerate(parts.attached):
        out = block(*h)
        if parts.is_final(k):
            loss = parts.loss_fn(out, target)
        else:
            h = handed(out)
            loss = recipe.local_loss(parts.heads[k], parts.merges[k](*h), target, inputs)
        total = loss if total is None else total + loss
    yield total
