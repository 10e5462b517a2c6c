"""One training step over a recipe's losses: the only place that runs autocast, backward, the loss
scaler and the optimizer step.

``SplitModule.train_step``, a pipeline rank's step and ``measure_block_times`` all call
:func:`run_step` on the losses ``Recipe.losses`` yields, so "the pipeline equals one process bit for
bit" rests on one loop, not on copies kept identical.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..base.errors import NoGradientError


def run_step(
    losses: Iterator[torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
    *,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    after_loss: Callable[[int], None] | None = None,
    before_step: Callable[[], None] | None = None,
    step: bool = True,
) -> list[torch.Tensor]:
    """Run each loss's forward under ``torch.autocast`` (``autocast_dtype``; None: full precision)
    and its backward (scaled by ``scaler``) before asking for the next, so one block's activations
    are alive at a time; then step ``optimizer`` once (through ``scaler`` when given).

    ``after_loss(k)`` runs after loss k's backward (a per-block optimizer step, a timer);
    ``before_step()`` before the step (waiting for gradient all-reduces); ``step=False`` leaves the
    step to the caller; ``optimizer=None`` neither zeroes nor steps. Returns the detached losses."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    done: list[torch.Tensor] = []
    while True:
        # Autocast covers the forward and the loss only; backward runs outside it, as autocast asks.
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = next(losses, None)
        if loss is None:
            break
        if not loss.requires_grad and torch.is_grad_enabled():
            raise NoGradientError(f"loss {len(done)} reaches no trainable parameter: its block's parameters (and "
                                  "its aux head's, if any) were frozen after convert. Unfreeze them, or freeze before "
                                  "convert so that the plan places the blocks around what is frozen")
        (scaler.scale(loss) if scaler is not None else loss).backward()
        done.append(loss.detach())
        del loss
        if after_loss is not None:
            after_loss(len(done) - 1)
    if before_step is not None:
        before_step()
    if step and optimizer is not None:
        if scaler is not None:  # skips a step whose gradients are not finite, then adapts the scale
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    return done
