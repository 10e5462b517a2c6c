"""``splitfx.plan``: trace → cost → cuts → aux probe → partition, and the :class:`SplitPlan` it returns."""
from __future__ import annotations

import json
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .errors import PlanError
from .passes import cost as cost_pass
from .passes.bind import unprefix
from .passes.cuts import Cut, Schedule, schedule
from .passes.emit import block_nodes, block_parameters
from .passes.partition import additive_cost, min_max_partition, storage_cost
from .passes.trace import LeafSpec, trace
from .passes.replace import Replacement, choose, fuse, identical_runs
from .passes.units import find_units
from .recipes import Boundary, GraphInfo, Recipe, get_recipe
from .recipes.layout import infer_layout

METHODS = ("memory", "flops", "params", "uniform")


@dataclass
class BlockPlan:
    """One gradient-isolated block. Byte counts are saved-for-backward activations."""

    index: int
    modules: list[str]
    params: int
    saved_bytes: int  # block + its aux head
    aux_saved_bytes: int
    flops: int
    aux_flops: int
    aux_params: int
    output_shape: list[int] | None  # the tensor handed to the next block (None for the last)
    start: int
    end: int

    @property
    def span(self) -> str:
        if not self.modules:
            return "(functional ops only)"
        return self.modules[0] if len(self.modules) == 1 else f"{self.modules[0]} … {self.modules[-1]}"


@dataclass
class PlanContext:
    """What ``convert`` reuses from planning (not part of the JSON view)."""

    model: nn.Module
    gm: fx.GraphModule
    probe: cost_pass.Probe
    sched: Schedule
    recipe: Recipe
    boundaries: list[Boundary]
    cuts: list[Cut]
    num_classes: int | None
    graph: GraphInfo


@dataclass
class SplitPlan:
    """K contiguous blocks with their predicted cost, and E2E vs local peak activation memory."""

    model: str
    num_blocks: int
    method: str
    recipe: str
    input_shapes: list[list[int]]
    blocks: list[BlockPlan]
    e2e_saved_bytes: int
    local_peak_bytes: int
    total_params: int
    legal_cuts: int
    positions: int
    replaced: list[str]  # RepL: blocks whose weights are synthesised from their neighbours
    replace_skipped: dict[str, str]  # RepL candidates not replaced, and why
    trainable_params_before: int  # before RepL
    trainable_params: int  # after RepL (fusion coefficients included)
    context: PlanContext | None = field(default=None, repr=False, compare=False)

    @property
    def memory_ratio(self) -> float:
        return self.local_peak_bytes / max(self.e2e_saved_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (per block keys ``modules``, ``params``, ``saved_bytes``, ``flops``, ...)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("blocks", "context")}
        d["blocks"] = [asdict(b) for b in self.blocks]
        d["memory_ratio"] = self.memory_ratio
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A table for people: one row per block, then the E2E vs local summary."""
        rows = [("block", "modules", "params", "saved act.", "of which aux", "GFLOPs", "aux params", "hands over")]
        for b in self.blocks:
            rows.append((
                str(b.index), b.span, _count(b.params), _bytes(b.saved_bytes), _bytes(b.aux_saved_bytes),
                f"{(b.flops + b.aux_flops) / 1e9:.2f}", _count(b.aux_params),
                "×".join(map(str, b.output_shape)) if b.output_shape else "(output)",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            f"{self.model}: {self.num_blocks} blocks by {self.method}, recipe {self.recipe!r}, "
            f"input {' '.join('×'.join(map(str, s)) for s in self.input_shapes)}, "
            f"{self.legal_cuts} legal cuts in {self.positions} nodes",
        ]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.rjust(w) if j >= 2 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(
            f"predicted peak saved activations: E2E {_bytes(self.e2e_saved_bytes)}, "
            f"local {_bytes(self.local_peak_bytes)} ({self.memory_ratio:.2f}× E2E)"
        )
        if self.replaced or self.replace_skipped:
            cut = 1 - self.trainable_params / max(self.trainable_params_before, 1)
            lines.append(f"RepL replaced: {', '.join(self.replaced) or 'none'}; trainable parameters "
                         f"{_count(self.trainable_params_before)} → {_count(self.trainable_params)} ({100 * cut:.1f} % fewer)")
            reasons: dict[str, list[str]] = {}
            for name, why in self.replace_skipped.items():
                reasons.setdefault(why, []).append(name)
            for why, names in reasons.items():
                lines.append(f"  not replaced ({why}): {', '.join(names)}")
        return "\n".join(lines)

    __str__ = table

    def plot(self, path: str) -> None:
        """Write the picture of this plan (PNG/SVG/PDF by extension)."""
        from .plot import plot_plan

        if self.context is None:
            raise PlanError("this plan was detached from its graph (SplitModule.plan); plot the plan splitfx.plan returned")
        plot_plan(self, path)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def _infer_num_classes(outputs: Any) -> int | None:
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        return int(outputs.shape[-1])
    return None


def _split_point_cut(name: str, sched: Schedule, G, model_name: str) -> int:
    """Index into ``sched.cuts`` of the cut right after module ``name``."""
    inside = [i for i, n in enumerate(sched.order) if G.nodes[n]["scope"] == name or G.nodes[n]["scope"].startswith(name + ".")]
    if not inside:
        raise PlanError(f"split point {name!r}: {model_name} has no module of that name in its traced graph.")
    position = inside[-1] + 1
    for i, cut in enumerate(sched.cuts):
        if cut.position == position:
            return i
    legal = sorted({G.nodes[c.node]["scope"] for c in sched.cuts} - {""})
    raise PlanError(
        f"split point {name!r}: more than one value is live after it in {model_name}, so it cannot be "
        f"a cut. Modules right before a legal cut: {', '.join(legal)}"
    )


def make_plan(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    num_blocks: int = 4,
    method: str = "memory",
    split_points: Sequence[str] | None = None,
    recipe: str | Recipe = "linear",
    num_classes: int | None = None,
    leaf_modules: Sequence[LeafSpec] = (),
    replace: int | Sequence[str] | None = None,
    replace_mode: str = "tensor",
) -> SplitPlan:
    """Trace ``model``, predict its costs and choose ``num_blocks`` gradient-isolated blocks.

    ``replace`` turns on RepL fusion (:mod:`splitfx.passes.replace`): every n-th interior block of
    each run of identical blocks, or the blocks named; ``replace_mode`` is "tensor" or "channel"."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    name = type(model).__name__
    if method not in METHODS:
        raise PlanError(f"unknown method {method!r}; choose one of {METHODS} or pass split_points=")
    recipe = get_recipe(recipe)
    if not recipe.split:
        num_blocks, split_points = 1, None
    trainable_before = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gm = trace(model, inputs, leaf_modules)
    probe = cost_pass.probe(gm, inputs)
    sched = schedule(probe.graph)
    replacement = Replacement()
    if replace is not None:
        units = find_units(model, probe, sched)
        replacement = choose(identical_runs(model, probe, sched, units), replace)
        if replacement.replaced:
            fuse(gm, model, probe, sched, replacement, units, replace_mode)
            probe = cost_pass.probe(gm, inputs)
            sched = schedule(probe.graph)
    G = probe.graph
    num_classes = num_classes or _infer_num_classes(probe.outputs)
    input_hw = tuple(inputs[0].shape[-2:]) if inputs[0].dim() == 4 else None
    # Only cuts whose tensor has a known layout can carry an aux head, and a replaced block stays
    # in one local block with both neighbours it is synthesised from.
    layouts = {c.node: infer_layout(c.shape, input_hw) for c in sched.cuts}
    together = [_span(sched, G, triple) for triple in replacement.triples]
    sched.cuts = [
        c for c in sched.cuts
        if layouts[c.node] is not None and not any(lo < c.position <= hi for lo, hi in together)
    ]

    if split_points is not None:
        chosen = sorted({_split_point_cut(p, sched, G, name) for p in split_points})
        num_blocks = len(chosen) + 1
    elif num_blocks < 1:
        raise PlanError(f"num_blocks must be at least 1, got {num_blocks}")
    elif num_blocks > len(sched.cuts) + 1:
        raise PlanError(
            f"{name} has {len(sched.cuts)} legal cut points, so num_blocks can be at most "
            f"{len(sched.cuts) + 1} (asked for {num_blocks}).",
            max_blocks=len(sched.cuts) + 1,
        )
    if num_blocks == 1:
        sched.cuts = []  # one block: nothing to place, no aux head to probe
    if num_blocks > 1 and num_classes is None:
        raise PlanError(f"cannot infer num_classes from {name}'s output; pass num_classes= for the aux heads.")

    boundaries = [
        Boundary(0, num_blocks, tuple(c.shape), G.nodes[c.node]["dtype"], layouts[c.node],
                 num_classes or 0, tuple(inputs[0].shape), c.position)
        for c in sched.cuts
    ]
    graph = GraphInfo(model, find_units(model, probe, sched) if recipe.needs_units and sched.cuts else [])
    aux = _AuxProbe(probe, recipe, graph, inputs)
    aux_costs = [aux.cost(c, b) for c, b in zip(sched.cuts, boundaries)]
    final_loss = aux.final_loss(num_classes)

    n = len(sched.order)
    bounds = [0, *(c.position for c in sched.cuts), n]
    saves = [G.nodes[v]["saved"] for v in sched.order]
    flops = additive_cost([G.nodes[v]["flops"] for v in sched.order], bounds)
    if split_points is not None:
        chosen_bounds = [i + 1 for i in chosen]
    else:
        costs = {
            "memory": lambda: storage_cost(saves, G.graph["storages"], bounds, [{}, *(a.saves for a in aux_costs), final_loss]),
            "flops": lambda: flops + np.asarray([0, *(a.flops for a in aux_costs), 0], dtype=float)[None, :],
            "params": lambda: additive_cost([G.nodes[v]["param_bytes"] for v in sched.order], bounds),
            "uniform": lambda: additive_cost([G.nodes[v]["op"].startswith("call") for v in sched.order], bounds),
        }
        weights = [0, *(G.nodes[c.node]["out_bytes"] for c in sched.cuts), 0]
        chosen_bounds = min_max_partition(costs[method](), num_blocks, weights)

    # Re-probe the chosen cuts with their real depth (InfoPro's weights, AugLocal's pyramid).
    path = [0, *chosen_bounds, len(bounds) - 1]
    chosen_boundaries = [dataclasses.replace(boundaries[j - 1], index=k) for k, j in enumerate(path[1:-1])]
    chosen_aux = [aux.cost(sched.cuts[j - 1], b) for j, b in zip(path[1:-1], chosen_boundaries)]
    ends = [bounds[j] for j in path]
    memory = storage_cost(saves, G.graph["storages"], ends, [{}, *(a.saves for a in chosen_aux), final_loss])
    backbone = storage_cost(saves, G.graph["storages"], ends)
    blocks = []
    for k, (start, end) in enumerate(zip(ends, ends[1:])):
        nodes = block_nodes(gm, G, sched, start, end)
        a = chosen_aux[k] if k < len(chosen_aux) else None
        blocks.append(BlockPlan(
            index=k,
            modules=list(dict.fromkeys(
                unprefix(G.nodes[nd.name]["scope"]) for nd in nodes if G.nodes[nd.name]["scope"] and nd.op != "output"
            )),
            params=sum(p.numel() for p in block_parameters(gm, nodes)),
            saved_bytes=int(memory[k, k + 1] + (_cascade_extra(memory, backbone, k) if recipe.cascade else 0)),
            aux_saved_bytes=int(sum(a.saves.values())) if a else 0,
            flops=int(flops[path[k], path[k + 1]]),
            aux_flops=a.flops if a else 0,
            aux_params=a.params if a else 0,
            output_shape=list(sched.cuts[path[k + 1] - 1].shape) if a else None,
            start=start,
            end=end,
        ))
    context = PlanContext(
        model, gm, probe, sched, recipe, chosen_boundaries, [sched.cuts[j - 1] for j in path[1:-1]], num_classes, graph,
    )
    return SplitPlan(
        model=model_name(model),
        num_blocks=num_blocks,
        method="split_points" if split_points is not None else method,
        recipe=recipe.name,
        input_shapes=[list(x.shape) for x in inputs],
        blocks=blocks,
        e2e_saved_bytes=int(sum(G.graph["storages"].values()) + sum(final_loss.values())),
        local_peak_bytes=max(b.saved_bytes for b in blocks),
        total_params=sum(p.numel() for p in model.parameters()),
        legal_cuts=len(sched.cuts),
        positions=n,
        replaced=replacement.replaced,
        replace_skipped=replacement.skipped,
        trainable_params_before=trainable_before,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad)
        + sum(p.numel() for p in getattr(gm, "repl", nn.Module()).parameters()),
        context=context,
    )


def _span(sched: Schedule, G, names: Sequence[str]) -> tuple[int, int]:
    """First and last order position of the nodes of the modules ``names``."""
    inside = [i for i, n in enumerate(sched.order)
              if any(G.nodes[n]["scope"] == m or G.nodes[n]["scope"].startswith(m + ".") for m in names)]
    return inside[0], inside[-1]


def _cascade_extra(memory: np.ndarray, backbone: np.ndarray, k: int) -> float:
    """A cascade step also holds block k once more (second path) and block k-1's activations."""
    if k == 0:
        return memory[0, 1] - backbone[0, 1]
    return memory[k, k + 1] + backbone[k - 1, k]


class _LocalLoss(nn.Module):
    """Aux head + recipe loss as one module, so the probe can swap in fake parameters."""

    def __init__(self, recipe: Recipe, head: nn.Module, inputs: tuple):
        super().__init__()
        self.recipe, self.head, self.inputs = recipe, head, inputs

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.recipe.local_loss(self.head, features, target, self.inputs)


@dataclass
class _AuxCost:
    saves: dict[int, int]  # storage key → bytes saved by the head and its loss
    flops: int
    params: int


class _AuxProbe:
    """Probes aux heads + losses on the fake boundary tensors themselves, so a storage the block
    already saves is not counted twice; one head per ``recipe.head_key``."""

    def __init__(self, probe: cost_pass.Probe, recipe: Recipe, graph: GraphInfo, inputs: tuple):
        self.probe, self.recipe, self.graph = probe, recipe, graph
        self.device = inputs[0].device
        self.inputs = tuple(probe.fake(x) for x in inputs)
        self.target = probe.fake(torch.zeros(inputs[0].shape[0], dtype=torch.long, device=self.device))
        self.heads: dict[Any, nn.Module] = {}

    def cost(self, cut: Cut, boundary: Boundary) -> _AuxCost:
        key = (self.recipe.head_key(boundary), boundary.index)
        if key not in self.heads:
            head = self.recipe.make_head(boundary, self.graph).to(self.device)
            self.heads[key] = _LocalLoss(self.recipe, head, self.inputs)
        _, saves, flops = self.probe.run_module(self.heads[key], self.probe.values[cut.node], self.target)
        return _AuxCost(dict(saves), flops, sum(p.numel() for p in self.heads[key].head.parameters()))

    def final_loss(self, num_classes: int | None) -> dict[int, int]:
        """Saves of the default cross-entropy on the model's output (when it is logits)."""
        if num_classes is None or not isinstance(self.probe.outputs, torch.Tensor):
            return {}
        return dict(self.probe.run_module(nn.CrossEntropyLoss(), self.probe.outputs, self.target)[1])


def model_name(model: nn.Module) -> str:
    """timm's architecture name where there is one, else the class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__
