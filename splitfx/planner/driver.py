"""The planner: trace → cost → cuts → aux cost → partition → :class:`SplitPlan`.

Block cost for ``method="memory"`` is the saved activations of the block plus its aux head and loss
(probed on the fake boundary tensor, :mod:`splitfx.passes.aux_cost`); the partition is the exact
lexicographic min-max of :mod:`splitfx.passes.partition`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..base.errors import PlanError
from ..base.report import BlockPlan, SplitPlan
from ..passes import cost as cost_pass
from ..passes.aux_cost import AuxCost, AuxProbe
from ..passes.cuts import Schedule, schedule
from ..passes.emit import block_nodes, block_parameters
from ..passes.names import unprefix
from ..passes.partition import additive_cost, first_saves, min_max_partition, storage_cost
from ..passes.replace import Replacement, choose, fuse, identical_runs
from ..passes.sharing import parameter_uses, shared_spans, trainable_per_position
from ..passes.trace import LeafSpec, trace
from ..passes.units import find_units
from ..recipes.base import Boundary, GraphInfo, Recipe
from .context import PlanContext
from .legality import mask_untrainable, offer_cuts, require_trainable, trainable_blocks
from .scopes import split_point_cut

METHODS = ("memory", "flops", "params", "uniform")


class _LocalLoss(nn.Module):
    """Aux head + recipe loss as one module, so the aux probe can swap in fake parameters."""

    def __init__(self, recipe: Recipe, head: nn.Module, inputs: tuple):
        super().__init__()
        self.recipe, self.head, self.inputs = recipe, head, inputs

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.recipe.local_loss(self.head, features, target, self.inputs)


def _traced(model: nn.Module, inputs: tuple, leaf_modules: Sequence[LeafSpec], replace, replace_mode: str):
    """The bound graph, its cost probe and schedule, with RepL fused in when asked for."""
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
    return gm, probe, sched, replacement


def _check_blocks(num_blocks: int, sched: Schedule, name: str) -> None:
    if num_blocks < 1:
        raise PlanError(f"num_blocks must be at least 1, got {num_blocks}")
    if num_blocks > len(sched.cuts) + 1:
        raise PlanError(
            f"{name} has {len(sched.cuts)} legal cut points, so num_blocks can be at most "
            f"{len(sched.cuts) + 1} (asked for {num_blocks}).",
            max_blocks=len(sched.cuts) + 1,
        )


def make_plan(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    num_blocks: int,
    *,
    method: str,
    split_points: Sequence[str] | None,
    recipe: Recipe,
    num_classes: int | None,
    leaf_modules: Sequence[LeafSpec],
    replace: int | Sequence[str] | None,
    replace_mode: str,
) -> SplitPlan:
    """Trace ``model``, predict its costs and choose ``num_blocks`` gradient-isolated blocks."""
    name = type(model).__name__
    if method not in METHODS:
        raise PlanError(f"unknown method {method!r}; choose one of {METHODS} or pass split_points=")
    if not recipe.split:
        num_blocks, split_points = 1, None
    trainable_before = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gm, probe, sched, replacement = _traced(model, inputs, leaf_modules, replace, replace_mode)
    G = probe.graph
    outputs = probe.outputs
    if num_classes is None and isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        num_classes = int(outputs.shape[-1])
    uses = parameter_uses(gm, G, sched)
    layouts, shared = offer_cuts(sched, G, replacement, shared_spans(uses),
                                 tuple(inputs[0].shape[-2:]) if inputs[0].dim() == 4 else None)
    chosen = None
    if split_points is not None:
        chosen = sorted({split_point_cut(p, sched, G, name) for p in split_points})
        num_blocks = len(chosen) + 1
    _check_blocks(num_blocks, sched, name)
    if num_blocks == 1:
        sched.cuts = []  # one block: nothing to place, no aux head to probe
    elif num_classes is None:
        raise PlanError(f"cannot infer num_classes from {name}'s output; pass num_classes= for the aux heads.")

    boundaries = [
        Boundary(0, num_blocks, tuple(c.shape), G.nodes[c.node]["dtype"], layouts[c.node],
                 num_classes or 0, tuple(inputs[0].shape), c.position)
        for c in sched.cuts
    ]
    graph = GraphInfo(model, find_units(model, probe, sched) if recipe.needs_units and sched.cuts else [])
    aux = AuxProbe(probe, inputs)

    def aux_cost(j: int, boundary: Boundary) -> AuxCost:
        """Aux head + loss at cut ``j`` (an index into ``sched.cuts``) for ``boundary``."""
        def build() -> nn.Module:
            return _LocalLoss(recipe, recipe.make_head(boundary, graph), aux.inputs)

        return aux.cost(sched.cuts[j].node, (recipe.head_key(boundary), boundary.index), build)

    final_loss = aux.output_loss(nn.CrossEntropyLoss()) if num_classes is not None else {}
    n = len(sched.order)
    bounds = [0, *(c.position for c in sched.cuts), n]
    saves = [G.nodes[v]["saved"] for v in sched.order]
    storages = G.graph["storages"]
    flops = additive_cost([G.nodes[v]["flops"] for v in sched.order], bounds)
    ok = trainable_blocks(trainable_per_position(uses, gm, n), bounds)
    if chosen is not None:
        path = [0, *(i + 1 for i in chosen), len(bounds) - 1]
        require_trainable(ok, path, name)
    else:
        aux_costs = [aux_cost(j, b) for j, b in enumerate(boundaries)]
        costs = {
            "memory": lambda: storage_cost(saves, storages, bounds, [{}, *(a.saves for a in aux_costs), final_loss]),
            "flops": lambda: flops + np.asarray([0, *(a.flops for a in aux_costs), 0], dtype=float)[None, :],
            "params": lambda: additive_cost([G.nodes[v]["param_bytes"] for v in sched.order], bounds),
            "uniform": lambda: additive_cost([G.nodes[v]["op"].startswith("call") for v in sched.order], bounds),
        }
        weights = [0, *(G.nodes[c.node]["out_bytes"] for c in sched.cuts), 0]
        cost = mask_untrainable(costs[method](), ok, num_blocks, name)
        path = [0, *min_max_partition(cost, num_blocks, weights), len(bounds) - 1]

    # Re-probe the chosen cuts with their real depth (InfoPro's weights, AugLocal's pyramid).
    cut_ids = [j - 1 for j in path[1:-1]]
    chosen_boundaries = [dataclasses.replace(boundaries[j], index=k) for k, j in enumerate(cut_ids)]
    chosen_aux = [aux_cost(j, b) for j, b in zip(cut_ids, chosen_boundaries, strict=True)]
    ends = [bounds[j] for j in path]
    with_aux = storage_cost(saves, storages, ends, [{}, *(a.saves for a in chosen_aux), final_loss])
    backbone = storage_cost(saves, storages, ends)
    nodes = [block_nodes(gm, G, sched, start, end) for start, end in pairwise(ends)]
    blocks = [
        _block(k, nodes[k], gm, G, start, end, int(recipe.step_bytes(with_aux, backbone, k)),
               int(flops[path[k], path[k + 1]]), chosen_aux[k] if k < len(chosen_aux) else None,
               sched.cuts[cut_ids[k]].shape if k < len(cut_ids) else None)
        for k, (start, end) in enumerate(pairwise(ends))
    ]
    context = PlanContext(model, gm, probe, sched, recipe, graph, chosen_boundaries,
                          [sched.cuts[j] for j in cut_ids], nodes)
    return SplitPlan(
        model=model_name(model),
        num_blocks=num_blocks,
        method="split_points" if chosen is not None else method,
        recipe=recipe.name,
        input_shapes=[list(x.shape) for x in inputs],
        blocks=blocks,
        e2e_saved_bytes=int(sum(storages.values()) + sum(final_loss.values())),
        local_peak_bytes=max(b.saved_bytes for b in blocks),
        total_params=sum(p.numel() for p in model.parameters()),
        legal_cuts=len(sched.cuts),
        positions=n,
        replaced=replacement.replaced,
        replace_skipped=replacement.skipped,
        trainable_params_before=trainable_before,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad)
        + sum(p.numel() for p in getattr(gm, "repl", nn.Module()).parameters()),
        shared_parameters=shared,
        saved_profile=[int(b) for b in first_saves(saves, storages)],
        context=context,
    )


def _block(k: int, nodes: list[fx.Node], gm: fx.GraphModule, G, start: int, end: int, saved: int, flops: int,
           aux: AuxCost | None, output_shape: Any) -> BlockPlan:
    return BlockPlan(
        index=k,
        modules=list(dict.fromkeys(
            unprefix(G.nodes[nd.name]["scope"]) for nd in nodes if G.nodes[nd.name]["scope"] and nd.op != "output"
        )),
        params=sum(p.numel() for p in block_parameters(gm, nodes)),
        saved_bytes=saved,
        aux_saved_bytes=int(sum(aux.saves.values())) if aux else 0,
        flops=flops,
        aux_flops=aux.flops if aux else 0,
        aux_params=aux.params if aux else 0,
        output_shape=list(output_shape) if output_shape is not None else None,
        start=start,
        end=end,
    )


def model_name(model: nn.Module) -> str:
    """timm's architecture name where there is one, else the class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__
