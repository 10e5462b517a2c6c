"""Copies of backbone layers for aux heads: fresh (AugLocal), trainable (MAN, MLAAN) and EMA (MAN, MLAAN)."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..passes.units import Unit
from .base import GraphInfo
from .heads import Resample, adapter
from .layout import Layout, MapSpec, follow


def _copy(module: nn.Module) -> nn.Module:
    """A deep copy that never writes its input in place: aux copies share their input with the
    backbone's autograd graph and with each other."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        if getattr(m, "inplace", None) is True:
            m.inplace = False
    for p in clone.parameters():
        p.requires_grad_(True)  # a RepL-replaced source is frozen; its copy is trained
    return clone


def fresh_copy(module: nn.Module) -> nn.Module:
    """Same architecture, new random weights (AugLocal's aux layers)."""
    clone = _copy(module)
    for m in clone.modules():
        if m is not clone and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if hasattr(clone, "reset_parameters"):
        clone.reset_parameters()
    return clone


def weight_copy(module: nn.Module) -> nn.Module:
    """Same architecture and weights, trained on its own from here (MAN's learnable copy)."""
    return _copy(module)


class EMA(nn.Module):
    """Exponential moving average of a backbone module, held in buffers.

    Its weights are buffers, never parameters: never in an optimizer or a DDP bucket, always in the
    state_dict. ``update(source)`` does θ ← m·θ + (1−m)·θ_source for parameters and copies the
    source's buffers (BatchNorm statistics)."""

    def __init__(self, source: nn.Module, momentum: float = 0.995):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum} (1.0 would never move)")
        self.momentum = momentum
        self.module = _copy(source)
        for owner in list(self.module.modules()):
            for name, p in list(owner.named_parameters(recurse=False)):
                delattr(owner, name)
                owner.register_buffer(name, p.detach().clone())

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        for name, p in source.named_parameters():
            self.module.get_buffer(name).lerp_(p.detach(), 1.0 - self.momentum)
        for name, b in source.named_buffers():
            self.module.get_buffer(name).copy_(b)


def bridge(spec: MapSpec, have: Sequence[int], have_layout: Layout, want: Sequence[int], want_layout: Layout
           ) -> nn.Module:
    """The layer that lets a copied layer expecting ``want`` read a tensor of ``have``: the cheap
    :func:`~.heads.adapter` where one fits (identity, 1×1 conv, Linear), else :class:`~.heads.Resample`."""
    cheap = adapter(have, have_layout, want, want_layout)
    return cheap if cheap is not None else Resample(spec, have, want, want_layout)


def chain(units: Sequence[Unit], graph: GraphInfo, spec: MapSpec, shape: Sequence[int], input_shape: Sequence[int],
          copy: Callable[[nn.Module], nn.Module]) -> tuple[list[nn.Module], tuple, str]:
    """``copy`` of each unit, run one after another from a tensor of ``shape`` read through ``spec``,
    with a :func:`bridge` where a unit expects another shape. Returns the modules and the shape and
    layout they produce."""
    hw = input_shape[-2:]
    layers: list[nn.Module] = []
    layout = spec.layout
    for unit in units:
        want = follow(unit.in_shape, hw, shape, layout)
        layers += [bridge(spec, shape, layout, unit.in_shape, want), copy(graph.model.get_submodule(unit.name))]
        shape, layout = unit.out_shape, follow(unit.out_shape, hw, unit.in_shape, want)
        spec = graph.spec(shape, layout, input_shape)
    return [m for m in layers if not isinstance(m, nn.Identity)], tuple(shape), layout
