"""Aux-head cost: probe any head + loss module on the fake value at a cut, next to the graph's own costs.

The module runs under the same fake mode and :class:`~splitfx.base.meter.SavedTensorMeter` as the
graph (see :mod:`.cost`), on the very fake tensor the cut hands over, so a storage the block already
saves is not counted twice. Modules are memoised by a key: boundaries with equal keys get
structurally identical heads, and probing one is enough.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .cost import Probe


@dataclass
class AuxCost:
    saves: dict[int, int]  # storage key → bytes saved by the head and its loss
    flops: int
    params: int


class AuxProbe:
    """Costs of modules called as ``module(features, target)`` on the fake values of the graph."""

    def __init__(self, probe: Probe, example_inputs: Sequence[torch.Tensor]):
        self.probe = probe
        device = example_inputs[0].device
        self.inputs = tuple(probe.fake(x) for x in example_inputs)
        self.target = probe.fake(torch.zeros(example_inputs[0].shape[0], dtype=torch.long, device=device))
        self.device = device
        self._modules: dict[Hashable, nn.Module] = {}

    def cost(self, node: str, key: Hashable, build: Callable[[], nn.Module]) -> AuxCost:
        """Saves, FLOPs and parameters of ``build()`` run on the value of ``node`` (built once per key)."""
        if key not in self._modules:
            self._modules[key] = build().to(self.device)
        module = self._modules[key]
        _, saves, flops = self.probe.run_module(module, self.probe.values[node], self.target)
        return AuxCost(dict(saves), flops, sum(p.numel() for p in module.parameters()))

    def output_loss(self, loss: nn.Module) -> dict[int, int]:
        """Saves of ``loss(output, target)`` on the model's output, when the output is one tensor."""
        if not isinstance(self.probe.outputs, torch.Tensor):
            return {}
        return dict(self.probe.run_module(loss, self.probe.outputs, self.target)[1])
