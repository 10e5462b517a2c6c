"""Layers and units: the model's own layers, found in the graph.

A layer is a module whose nodes form one contiguous run of the ordered graph that starts and ends
at cuts, that is a layer of the model (a child of the root or of a Sequential/ModuleList) and has
parameters. A unit is a layer bounded by single-tensor cuts that contains no finer such layer; each
unit is checked to run eagerly on its single input under the probe's fake mode, so ``module(x)`` on
a tensor of ``in_shape`` is known to produce ``out_shape``. AugLocal, MAN and MLAAN build their aux
heads from copies of units. The partition's blocks each hold one whole layer of the model's repeated
kind (:func:`find_layers`), which multi-tensor cuts may bound (HRNet's branch blocks, between which
every branch is handed over) and which need not run alone (pvt_v2's blocks also take the feature size).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx
import torch
from torch import nn

from .cost import Probe
from .cuts import Cut, Schedule
from .names import inside
from .node_cost import node_cost


@dataclass(frozen=True)
class Layer:
    name: str  # FQN in the user's model
    start: int  # order position of its first node (a cut position)
    end: int  # order position after its last node (a cut position)


@dataclass(frozen=True)
class Unit(Layer):
    in_shape: tuple
    out_shape: tuple


def find_units(model: nn.Module, probe: Probe, sched: Schedule) -> list[Unit]:
    """All units of the graph, in order (see module docstring)."""
    at = {c.position: c for c in sched.cuts if c.single}
    units = [Unit(layer.name, layer.start, layer.end, at[layer.start].shapes[0], at[layer.end].shapes[0])
             for layer in _innermost(_layers(model, probe.graph, sched, _bounding(at.values())))]
    return [u for u in units if _runs_alone(model, probe, u, at[u.start].nodes[0])]


def find_layers(model: nn.Module, G: nx.DiGraph, sched: Schedule) -> list[Layer]:
    """The layers of the model's repeated kind between any of ``sched``'s cuts, in order: the
    innermost of the composite layers (residual, transformer blocks) of a class found at least twice,
    so that a downsampling Sequential inside a residual block does not stand for the block; where
    there are none, the layers of a class found at least twice (a plain conv stack's convolutions)."""
    found = _layers(model, G, sched, _bounding(sched.cuts))
    kinds = Counter(type(model.get_submodule(layer.name)) for layer in found)
    repeated = [layer for layer in found if kinds[type(model.get_submodule(layer.name))] >= 2]
    composite = [layer for layer in repeated if next(model.get_submodule(layer.name).children(), None) is not None]
    return _innermost(composite or repeated)


def _bounding(cuts: Iterable[Cut]) -> dict[int, int]:
    """Every position of each cut's run (:attr:`Cut.run`) → the cut's position."""
    return {p: c.position for c in cuts for p in c.run}


def _layers(model: nn.Module, G: nx.DiGraph, sched: Schedule, at: dict[int, int]) -> list[Layer]:
    """The model's layers whose nodes run contiguously from one cut's run to another's (``at``:
    :func:`_bounding`), each from the one cut's position to the other's."""
    span: dict[str, list[int]] = {}
    for p, name in enumerate(sched.order):
        scope = node_cost(G, name).scope
        parts = scope.split(".") if scope else []
        for i in range(1, len(parts) + 1):
            span.setdefault(".".join(parts[:i]), []).append(p)
    found = []
    for name, positions in span.items():
        first, last = positions[0], positions[-1]
        if last - first + 1 != len(positions) or at.get(first) is None or at.get(last + 1, first) <= at[first]:
            continue
        parent = model.get_submodule(name.rpartition(".")[0])
        if parent is not model and not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        if next(model.get_submodule(name).parameters(), None) is None:
            continue  # activations, pooling, dropout: nothing to learn
        found.append(Layer(name, at[first], at[last + 1]))
    return found


def _innermost(layers: list[Layer]) -> list[Layer]:
    """Those of ``layers`` that contain no other of them, in order."""
    return sorted((a for a in layers if not any(b.name != a.name and inside(b.name, a.name) for b in layers)),
                  key=lambda layer: layer.start)


def _runs_alone(model: nn.Module, probe: Probe, unit: Unit, input_node: str) -> bool:
    try:
        out, _, _ = probe.run_module(model.get_submodule(unit.name), probe.values[input_node])
    except Exception:
        return False  # needs more than one input (e.g. CoaT's size=), or is not a module call
    return isinstance(out, torch.Tensor) and tuple(out.shape) == unit.out_shape
