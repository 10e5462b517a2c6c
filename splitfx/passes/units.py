"""Units: the model's own layers, found in the graph, that recipes copy into aux heads.

A unit is a module (residual block, transformer block, stem layer) whose nodes form one
contiguous run of the ordered graph that starts and ends at single-tensor cuts, that is a layer of the model
(a child of the root or of a Sequential/ModuleList) with parameters, and that contains no finer
such module. Each unit is checked to run eagerly on its
single input under the probe's fake mode, so ``module(x)`` on a tensor of ``in_shape`` is known to
produce ``out_shape``. AugLocal, MAN and MLAAN build their aux heads from copies of these.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .cost import Probe
from .cuts import Schedule
from .names import inside
from .node_cost import node_cost


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
        scope = node_cost(G, name).scope
        parts = scope.split(".") if scope else []
        for i in range(1, len(parts) + 1):
            span.setdefault(".".join(parts[:i]), []).append(p)
    at = {c.position: c for c in sched.cuts if c.single}
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
        found[name] = Unit(name, first, last + 1, at[first].shapes[0], at[last + 1].shapes[0])
    minimal = [u for name, u in found.items() if not any(o != name and inside(o, name) for o in found)]
    return [u for u in sorted(minimal, key=lambda u: u.start) if _runs_alone(model, probe, u, at[u.start].nodes[0])]


def _runs_alone(model: nn.Module, probe: Probe, unit: Unit, input_node: str) -> bool:
    try:
        out, _, _ = probe.run_module(model.get_submodule(unit.name), probe.values[input_node])
    except Exception:
        return False  # needs more than one input (e.g. CoaT's size=), or is not a module call
    return isinstance(out, torch.Tensor) and tuple(out.shape) == unit.out_shape
