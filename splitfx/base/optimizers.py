"""The optimizers ``plan(optimizer=...)`` and ``--optimizer`` name: one table for memory and timing.

The memory budget counts each one's state tensors per parameter; ``measure_block_times`` steps the
optimizer the factory makes. Both read this table, so a name means the same optimizer in both.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

MakeOptimizer = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """One named optimizer: ``states`` tensors of a parameter's size kept per parameter (SGD with
    momentum one, Adam two), and ``make(parameters)``. Calling the spec makes the optimizer, so it
    serves wherever a :data:`MakeOptimizer` is taken."""

    states: int
    make: MakeOptimizer

    def __call__(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return self.make(parameters)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(0, lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum": OptimizerSpec(1, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "adam": OptimizerSpec(2, torch.optim.Adam),
    "adamw": OptimizerSpec(2, torch.optim.AdamW),
    "rmsprop": OptimizerSpec(1, torch.optim.RMSprop),
    "adagrad": OptimizerSpec(1, torch.optim.Adagrad),
}


def optimizer_spec(name: str) -> OptimizerSpec:
    """The entry for ``name``; a ValueError naming the choices for any other."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name]
