"""A teacher whose activations are a student's targets (LTL, block-wise feature distillation).

The teacher is copied, frozen and put in eval mode once, then traced with splitfx's own tracer on
the example inputs the student was planned on. Each value a student cut hands over is matched to
the teacher node in the same place: the same operation (the same module's call, by qualified name,
or the same function or method), in the same module scope, and the same how-manyth of its kind
there. A ``rename`` mapping of module-name prefixes (student → teacher) matches models whose
modules are named differently. One graph then computes, under ``no_grad``, every node the cuts read.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..passes.trace import trace

Key = tuple[str, str, str, int]


def _keys(graph: fx.Graph) -> dict[str, Key]:
    """Each node's place: (op, what it calls, module scope, how many such calls came before it there)."""
    seen: dict[tuple, int] = {}
    keys = {}
    for n in graph.nodes:
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__qualname__", str(n.target))
        kind = (n.op, target, n.meta.get("splitfx", {}).get("scope", ""))
        keys[n.name] = (*kind, seen.get(kind, 0))
        seen[kind] = seen.get(kind, 0) + 1
    return keys


def _renamed(name: str, rename: Mapping[str, str]) -> str:
    """``name`` (``model.``-prefixed or not) with its longest matching prefix in ``rename`` replaced."""
    bound = name.startswith("model.")
    bare = name[len("model."):] if bound else name
    for old in sorted(rename, key=len, reverse=True):
        if bare == old or bare.startswith(old + "."):
            bare = rename[old] + bare[len(old):]
            break
    return "model." + bare if bound else bare


class Teacher:
    """A frozen copy of ``model`` in eval mode, traced on first use; see the module docstring."""

    def __init__(self, model: nn.Module, rename: Mapping[str, str] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"teacher= takes an nn.Module (a trained model of the student's topology), got "
                            f"{type(model).__name__}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.rename = dict(rename or {})
        self._traced: fx.GraphModule | None = None
        self._where: dict[Key, fx.Node] = {}
        self._graphs: dict[tuple[str, ...], fx.GraphModule] = {}

    def trace(self, inputs: Sequence[torch.Tensor]) -> None:
        """Trace the teacher on ``inputs`` (once) and record every node's output shape."""
        if self._traced is not None:
            return
        gm = trace(self.model, tuple(inputs), (), True)
        with torch.no_grad():
            ShapeProp(gm).propagate(*(t.to(self.device) for t in inputs))
        self._traced = gm
        self._where = {key: node for node, key in zip(gm.graph.nodes, _keys(gm.graph).values(), strict=True)}

    @property
    def device(self) -> torch.device:
        ref = next(iter(self.model.parameters()), None)
        return ref.device if ref is not None else torch.device("cpu")

    def match(self, student: fx.GraphModule, nodes: Sequence[str],
              shapes: Sequence[Sequence[int]]) -> tuple[tuple[str, ...], int] | str:
        """The teacher node for each of ``nodes`` (names in ``student``'s graph, handing over tensors
        of ``shapes``) and how many time steps the student's batch folds over the teacher's (a spiking
        student of an ordinary teacher: T, its batch T·B), or why there is none."""
        assert self._traced is not None, "trace() first"
        keys = _keys(student.graph)
        found, folds = [], set()
        for name, shape in zip(nodes, shapes, strict=True):
            op, target, scope, nth = keys[name]
            named = _renamed(target, self.rename) if op in ("call_module", "get_attr") else target
            node = self._where.get((op, named, _renamed(scope, self.rename), nth))
            where = f"{name} ({op} {target} in {scope or 'the model'}, call {nth + 1} there)"
            if node is None:
                return f"the teacher has no node matching the student's {where}"
            got = tuple(getattr(node.meta.get("tensor_meta"), "shape", ()))
            fold = _fold(tuple(shape), got)
            if fold is None:
                return f"the teacher's {node.name} has shape {got}, the student's {where} {tuple(shape)}"
            found.append(node.name)
            folds.add(fold)
        if len(folds) > 1:
            return f"the student's {', '.join(nodes)} fold the teacher's batch {sorted(folds)} times: not one time axis"
        return tuple(found), folds.pop()

    def graph(self, names: Sequence[str]) -> fx.GraphModule:
        """The teacher's graph computing only ``names``' values, as a tuple (cached per set of names)."""
        key = tuple(names)
        if key not in self._graphs:
            assert self._traced is not None, "trace() first"
            graph = copy.deepcopy(self._traced.graph)
            env = {n.name: n for n in graph.nodes}
            out = next(n for n in graph.nodes if n.op == "output")
            out.args = (tuple(env[name] for name in key),)
            gm = fx.GraphModule(self._traced, graph)
            gm.graph.eliminate_dead_code()
            gm.recompile()
            self._graphs[key] = gm
        return self._graphs[key]

    def run(self, names: Sequence[str], inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The values of ``names`` on ``inputs`` (the teacher moved to their device first), no grad."""
        device = inputs[0].device
        if self.device != device:
            self._traced.to(device)  # the model, and any constant the trace holds
            self._graphs.clear()  # they hold the buffers they read as they were
        with torch.no_grad():
            return dict(zip(names, self.graph(names)(*inputs), strict=True))


def _fold(student: tuple[int, ...], teacher: tuple[int, ...]) -> int | None:
    """T where a student tensor of ``student`` shape is the teacher's with its batch T·B, else None."""
    if not teacher or len(student) != len(teacher) or student[1:] != teacher[1:]:
        return None
    return student[0] // teacher[0] if teacher[0] > 0 and student[0] % teacher[0] == 0 else None


def normalised(a: torch.Tensor, percentile: float | None) -> torch.Tensor:
    """LTL's target: ``a`` over the ``percentile``-th percentile of its magnitude in this batch,
    clamped to [-1, 1] (to [0, 1] for the non-negative activations LTL's teachers have); None: ``a``."""
    if percentile is None or not a.is_floating_point():
        return a
    flat = a.detach().abs().flatten().float()
    k = max(1, min(flat.numel(), round(flat.numel() * percentile / 100)))
    scale = flat.kthvalue(k).values.clamp_min(torch.finfo(flat.dtype).tiny)
    return (a / scale.to(a.dtype)).clamp(-1, 1)
