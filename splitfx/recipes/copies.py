"""Copies of backbone layers for aux heads: fresh (AugLocal), trainable (MAN, MLAAN) and EMA (MAN, MLAAN)."""
from __future__ import annotations

import copy

import torch
from torch import nn


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
