"""Every bytes formula for weights and training state, measured or predicted, in one place.

Measured: the bytes a set of tensors holds, memory shared by several of them counted once (tied
weights, detached aliases), and the bytes an optimizer's state holds. Predicted: what a training
step holds besides activations, from the parameter bytes and the optimizer's name. The planner, the
pipeline stages, the benches and the ranks all count with these, so their figures agree.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .meter import storage_key
from .optimizers import optimizer_spec


def weight_bytes(tensors: nn.Module | Iterable[torch.Tensor], seen: set[tuple[int, int, int]] | None = None) -> int:
    """Bytes of ``tensors`` (a module: its parameters and buffers), each stretch of storage counted
    once: a tied weight, a detached alias or a tensor listed twice is one. ``meta`` tensors hold none.
    Stretches in ``seen`` are skipped and those counted are added to it, so that a caller walking a
    graph counts a shared weight at its first use only."""
    if isinstance(tensors, nn.Module):
        tensors = (*tensors.parameters(), *tensors.buffers())
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        if t.device.type == "meta":
            continue
        size = t.numel() * t.element_size()
        stretch = (storage_key(t), t.storage_offset() * t.element_size(), size)
        if stretch not in seen:
            seen.add(stretch)
            total += size
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the state ``optimizer`` holds now (Adam's moments and step counts), measured."""
    return weight_bytes(t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor))


def training_state_bytes(param_bytes: int, trainable_bytes: int, optimizer: str) -> int:
    """Predicted bytes of a training step besides activations: every parameter, and a gradient plus
    ``optimizer``'s state tensors for each trainable one."""
    return param_bytes + trainable_bytes * (1 + optimizer_spec(optimizer).states)
