"""RepL pass: replaced-block fusion.

Candidates are runs of ≥ 3 consecutive units (see :mod:`units`) that are structurally identical:
same class, same parameter names and shapes, and isomorphic subgraphs (networkx VF2 with each node
labelled by its op and its target relative to the unit). A replaced unit keeps its structure and
buffers but owns no trainable weights: :class:`Surrogate` synthesises them as
``θ̂ = a ⊙ θ_prev + b ⊙ θ_next`` (a, b learnable, one pair per tensor or per output channel,
initialised to ½ so the block starts as the mean of its neighbours) and applies the unit to its
input with ``torch.func.functional_call``. In the traced graph the unit's nodes become one
``call_module`` on the surrogate.

splitfx's own choices (the RepL papers publish no code): which blocks are replaced (every n-th of a
run, never its first or last, never next to another replaced block, or the names given) and the two
granularities of (a, b).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call

from ..base.errors import ArgumentError
from .cost import Probe
from .cuts import Schedule
from .names import inside, unprefix
from .node_cost import node_cost
from .units import Unit, find_units

MODES = ("tensor", "channel")
_LABEL = "label"  # the networkx attribute VF2 matches a unit's nodes by (a subgraph's own, not the cost graph's)


class Surrogate(nn.Module):
    """Runs ``replaced`` with parameters synthesised from ``prev`` and ``next``.

    The three modules are held by reference (not registered), so the surrogate's own parameters
    are only the fusion coefficients; ``materialize()`` writes θ̂ into the replaced block."""

    def __init__(self, names: tuple[str, str, str], modules: tuple[nn.Module, nn.Module, nn.Module], mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"RepL mode must be one of {MODES}, got {mode!r}")
        self.names = names
        object.__setattr__(self, "_modules3", modules)
        self.mode = mode
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        for name, p in modules[1].named_parameters():
            shape = () if mode == "tensor" or p.dim() == 0 else (p.shape[0],)
            key = name.replace(".", "__")
            self.a[key] = nn.Parameter(torch.full(shape, 0.5, dtype=p.dtype, device=p.device))
            self.b[key] = nn.Parameter(torch.full(shape, 0.5, dtype=p.dtype, device=p.device))
            p.requires_grad_(False)

    def synthesised(self) -> dict[str, torch.Tensor]:
        prev, replaced, nxt = self._modules3
        out = {}
        for name, _ in replaced.named_parameters():
            key = name.replace(".", "__")
            a, b = self.a[key], self.b[key]
            theta_prev, theta_next = prev.get_parameter(name), nxt.get_parameter(name)
            if a.dim():
                a = a.view(-1, *([1] * (theta_prev.dim() - 1)))
                b = b.view(-1, *([1] * (theta_prev.dim() - 1)))
            out[name] = a * theta_prev + b * theta_next
        return out

    def forward(self, *args, **kwargs):
        replaced = self._modules3[1]
        return functional_call(replaced, {**dict(replaced.named_buffers()), **self.synthesised()}, args, kwargs)

    @torch.no_grad()
    def materialize(self) -> None:
        """Write θ̂ into the replaced block's own parameters: the model is ordinary again."""
        replaced = self._modules3[1]
        for name, value in self.synthesised().items():
            replaced.get_parameter(name).copy_(value)

    def extra_repr(self) -> str:
        return f"{self.names[1]} = a⊙{self.names[0]} + b⊙{self.names[2]}, mode={self.mode!r}"


@dataclass
class Replacement:
    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # candidate → why it was not replaced
    triples: list[tuple[str, str, str]] = field(default_factory=list)


def _signature(module: nn.Module) -> tuple:
    return type(module), tuple((n, tuple(p.shape)) for n, p in module.named_parameters())


def _labelled(G: nx.DiGraph, names: Sequence[str], unit: str) -> nx.DiGraph:
    """The subgraph of ``names``, each node labelled by its op and its target relative to ``unit``."""
    def label(n: str) -> tuple[str, str]:
        cost = node_cost(G, n)
        local = unprefix(cost.target)
        return cost.op, local[len(unit):] if local.startswith(unit) else local

    view = G.subgraph(names)
    sub = nx.DiGraph()
    sub.add_nodes_from((n, {_LABEL: label(n)}) for n in view)
    sub.add_edges_from(view.edges)
    return sub


def identical_runs(model: nn.Module, probe: Probe, sched: Schedule, units: list[Unit]) -> list[list[Unit]]:
    """Maximal runs of ≥ 3 consecutive, structurally identical units."""
    G = probe.graph
    runs: list[list[Unit]] = []
    current: list[Unit] = []

    def same(a: Unit, b: Unit) -> bool:
        ma, mb = model.get_submodule(a.name), model.get_submodule(b.name)
        if _signature(ma) != _signature(mb) or a.in_shape != b.in_shape or a.out_shape != b.out_shape:
            return False
        # A unit's own nodes only: its span runs from cut to cut, and a cut's run may hold the next unit's
        # first nodes (the size read it starts with, passes/cuts.Cut.run).
        ga = _labelled(G, [n for n in sched.order[a.start:a.end] if inside(node_cost(G, n).scope, a.name)], a.name)
        gb = _labelled(G, [n for n in sched.order[b.start:b.end] if inside(node_cost(G, n).scope, b.name)], b.name)
        return nx.is_isomorphic(ga, gb, node_match=nx.isomorphism.categorical_node_match(_LABEL, None))

    for unit in units:
        if current and current[-1].end == unit.start and same(current[-1], unit):
            current.append(unit)
        else:
            if len(current) >= 3:
                runs.append(current)
            current = [unit]
    if len(current) >= 3:
        runs.append(current)
    return runs


def choose(runs: list[list[Unit]], replace: int | Sequence[str]) -> Replacement:
    """Which interior units to replace: every n-th of each run, or the names given."""
    result = Replacement()
    interior = {u.name: (run[i - 1].name, u.name, run[i + 1].name)
                for run in runs for i, u in enumerate(run) if 0 < i < len(run) - 1}
    ends = {run[0].name for run in runs} | {run[-1].name for run in runs}
    if isinstance(replace, int):
        if replace < 2:
            raise ValueError("replace=n needs n ≥ 2: a replaced block's neighbours must keep their own weights")
        wanted = [u.name for run in runs for i, u in enumerate(run) if i % replace == replace - 1]
    else:
        wanted = list(replace)
    taken: set[str] = set()
    for name in wanted:
        if name in ends:
            result.skipped[name] = "first or last block of its run"
        elif name not in interior:
            result.skipped[name] = "not inside a run of ≥ 3 identical blocks"
        elif any(n in taken for n in interior[name]) or any(name in interior[t] for t in taken):
            result.skipped[name] = "next to another replaced block"
        else:
            taken.add(name)
            result.replaced.append(name)
            result.triples.append(interior[name])
    for name in interior:
        if name not in taken and name not in result.skipped:
            result.skipped[name] = "not selected"
    if not result.replaced:  # asked for RepL and none would happen: say why rather than train without it
        found = ", ".join(f"{run[0].name} … {run[-1].name} ({len(run)})" for run in runs) or "none"
        why = "; ".join(f"{n}: {r}" for n, r in result.skipped.items() if r != "not selected")
        raise ArgumentError(f"replace={replace!r} replaces no unit: RepL takes interior units of runs of ≥ 3 "
                            f"consecutive identical units, and this model's runs are: {found}"
                            + (f" ({why})" if why else "") + ". Name units inside a run, or drop replace")
    return result


def fuse(gm: fx.GraphModule, model: nn.Module, probe: Probe, sched: Schedule, replacement: Replacement,
         units: list[Unit], mode: str) -> nn.ModuleDict:
    """Rewrite ``gm`` in place: each replaced unit's nodes become one call to its Surrogate.

    Returns the surrogates, which ``gm`` reaches as ``gm.repl`` (also to be set on every block)."""
    surrogates = nn.ModuleDict()
    gm.repl = surrogates
    by_name = {n.name: n for n in gm.graph.nodes}
    at = {c.position: c for c in sched.cuts if c.single}
    spans = {u.name: u for u in units}
    for prev, name, nxt in replacement.triples:
        unit = spans[name]
        key = name.replace(".", "__")
        surrogates[key] = Surrogate((prev, name, nxt), tuple(model.get_submodule(n) for n in (prev, name, nxt)), mode)
        src, dst = by_name[at[unit.start].nodes[0]], by_name[at[unit.end].nodes[0]]
        with gm.graph.inserting_after(dst):
            call = gm.graph.call_module(f"repl.{key}", (src,))
        call.meta = {"splitfx": {"scope": name, "cls": type(model.get_submodule(name)).__name__}}
        dst.replace_all_uses_with(call, delete_user_cb=lambda user, call=call: user is not call)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return surrogates


__all__ = ["MODES", "Replacement", "Surrogate", "choose", "find_units", "fuse", "identical_runs"]
