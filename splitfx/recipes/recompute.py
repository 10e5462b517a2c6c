"""Aux-head parts recomputed in backward: ``torch.utils.checkpoint`` with BatchNorm statistics moved once.

A head part run under :func:`recomputed` keeps none of its inner activations until the loss's
backward; backward runs it forward again, so only that part's activations are alive, and only while
its own gradient is computed. Used where a paper's head is heavier than the block it trains: MAN's
copies of the next layer, MLAAN's leap copies, HPFF's quadrant decoders (each recomputed alone, so
one quadrant's activations are alive at a time: what patch feature fusion is for). Outputs and
gradients equal those of the plain call; plain checkpointing would also move every BatchNorm's
running statistics a second time in the recompute, which the recompute here does not.

The inputs a recompute needs stay alive until its backward. ``torch.utils.checkpoint`` holds them
out of autograd's sight, so each input is passed through an identity that saves it for backward
(:class:`_Kept`): the same storage, no copy, but a :class:`~splitfx.base.meter.SavedTensorMeter`
counts it, and the plan's saved bytes stay what the step keeps. A recomputed part must not modify
its input in place (the recompute would read the modified tensor): autograd refuses that, as the
identity returns a view.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _statistics_held(module: nn.Module) -> Iterator[None]:
    """Every BatchNorm or InstanceNorm in ``module`` that tracks running statistics normalises with
    the batch as usual but leaves its running statistics (and its batch count) as they are."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             and m.training and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class _Kept(torch.autograd.Function):
    """The identity, saving its input for backward: a tensor something else keeps, made visible."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def recomputed(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)``, its activations recomputed in backward instead of kept (module docstring)."""
    args = tuple(_Kept.apply(a) if a.requires_grad else a for a in args)
    return checkpoint(module, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _statistics_held(module)))


def runner(recompute: bool):
    """How a head calls its parts: :func:`recomputed` when ``recompute``, else plainly."""
    return recomputed if recompute else (lambda module, *args: module(*args))
