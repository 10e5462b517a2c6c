"""Units: the model's own layers, found in the graph, that recipes copy into aux heads.

A unit is a module (residual block, transformer block, stem layer) whose nodes form one
contiguous run of the ordered graph that starts and ends at legal cuts, that is a layer of the model
(a child of the root or of a Sequential/ModuleList) with parameters, and that contains no finer
such module. Each unit is checked to run eagerly on its
single input under the probe's fake mode, so ``module(x)`` on a tensor of ``in_shape`` is known to
produce ``out_shape``. AugLocal, MAN and MLAAN build their aux heads from copies of these.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .cost import Probe
from .cuts import Schedule


@dataclass(frozen=True)
class Unit:
    name: str  # FQN in the user's model
    start: int  # order position of its first node (a cut position)
    end: int  # order position after its last node (a cut position)
    in_shape: tuple
    out_shape: tuple


def find_units(model: nn.Module, probe: Probe, sched: Schedule) -> list[Unit]:
    """All units of the graph, in order (see module docstring)."""
    G = probe.graph
    span: dict[str, list[int]] = {}
    for p, name in enumerate(sched.order):
        scope = G.nodes[name]["scope"]
        parts = scope.split(".") if scope else []
        for i in range(1, len(parts) + 1):
            span.setdefault(".".join(parts[:i]), []).append(p)
    at = {c.position: c for c in sched.cuts}
    found: dict[str, Unit] = {}
    for name, positions in span.items():
        first, last = positions[0], positions[-1]
        if last - first + 1 != len(positions) or first not in at or last + 1 not in at:
            continue
        parent = model.get_submodule(name.rpartition(".")[0])
        if parent is not model and not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        if next(model.get_submodule(name).parameters(), None) is None:
            continue  # activations, pooling, dropout: nothing for an aux copy to learn
        found[name] = Unit(name, first, last + 1, tuple(at[first].shape), tuple(at[last + 1].shape))
    minimal = [u for name, u in found.items() if not any(o.startswith(name + ".") for o in found)]
    return [u for u in sorted(minimal, key=lambda u: u.start) if _runs_alone(model, probe, u, at[u.start].node)]


def _runs_alone(model: nn.Module, probe: Probe, unit: Unit, input_node: str) -> bool:
    try:
        out, _, _ = probe.run_module(model.get_submodule(unit.name), probe.values[input_node])
    except Exception:
        return False  # needs more than one input (e.g. CoaT's size=), or is not a module call
    return isinstance(out, torch.Tensor) and tuple(out.shape) == unit.out_shape


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
