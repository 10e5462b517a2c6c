"""Aux-head cost: probe any head + loss module on the fake value at a cut, next to the graph's own costs.

The module runs under the same fake mode and :class:`~splitfx.base.meter.SavedTensorMeter` as the
graph (see :mod:`.cost`), on the very fake tensor the cut hands over, so a storage the block already
saves is not counted twice. Costs are memoised by a key: boundaries with equal keys get
structurally identical heads on inputs of the same shapes, and probing one is enough.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..base.meter import storage_key
from ..base.tensors import TensorSpec
from .cost import Probe


@dataclass
class AuxCost:
    saves: dict[int, int]  # storage key → bytes saved by the head and its loss
    flops: int
    params: int


class AuxProbe:
    """Costs of modules called as ``module(features, target)`` on the fake values of the graph."""

    def __init__(self, probe: Probe, example_inputs: Sequence[torch.Tensor], target: TensorSpec | None = None):
        """``target``: the shape and dtype of the task's target (default: a ``[B]`` class target)."""
        self.probe = probe
        device = example_inputs[0].device
        self.inputs = tuple(probe.fake(x) for x in example_inputs)
        target = target or TensorSpec((example_inputs[0].shape[0],), torch.long)
        with probe.fake_mode:  # the task's target, never allocated
            self.target = torch.zeros(target.shape, dtype=target.dtype, device=device)
        self.device = device
        self._costs: dict[Hashable, tuple[list, int, int]] = {}

    def cost(self, nodes: Sequence[str], key: Hashable, build: Callable[[], nn.Module]) -> AuxCost:
        """Saves, FLOPs and parameters of ``build()`` called as ``module(values, target)`` on the tuple
        of the values of ``nodes``. Built and run once per key: equal keys mean identical heads on
        inputs of identical shapes, so a later cut reuses the saves with its own input storages."""
        values = tuple(self.probe.values[n] for n in nodes)
        inputs = [storage_key(v) for v in values]
        if key not in self._costs:
            with torch.device("meta"):  # only shapes matter here: skip initialising weights
                module = build()
            module = module.to_empty(device=self.device)
            if values[0].is_floating_point():
                module = module.to(dtype=values[0].dtype)  # heads follow the model's dtype
            _, saves, flops = self.probe.run_module(module, values, self.target)
            template = [(inputs.index(k) if k in inputs else None, k, b) for k, b in dict(saves).items()]
            self._costs[key] = (template, flops, sum(p.numel() for p in module.parameters()))
        template, flops, params = self._costs[key]
        saves = {inputs[i] if i is not None else k: b for i, k, b in template}
        return AuxCost(saves, flops, params)

    def output_loss(self, loss: Callable) -> dict[int, int]:
        """Saves of ``loss(output, target)`` on the model's output (a tensor or a structure)."""
        module = loss if isinstance(loss, nn.Module) else _Called(loss)
        return dict(self.probe.run_module(module, self.probe.outputs, self.target)[1])


class _Called(nn.Module):
    """A loss function as a module, so the probe can run it (it holds no tensors of its own)."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, target)
