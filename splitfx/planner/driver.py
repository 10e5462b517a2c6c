"""The planner: trace → cost → cuts → aux cost → partition → emit → simulate → :class:`Split`.

Block cost for ``method="memory"`` is the saved activations of the block plus its aux head and loss
(probed on the fake boundary tensor, :mod:`splitfx.passes.aux_cost`); the partition is the exact
lexicographic min-max of :mod:`splitfx.passes.partition`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.fx as fx
from torch import nn

from ..base.errors import PlanError
from ..base.memory import weight_bytes
from ..base.report import SplitPlan
from ..base.tensors import node_parameters
from ..passes import cost as cost_pass
from ..passes.aux_cost import AuxCost, AuxProbe
from ..passes.cuts import Cut, Schedule, schedule
from ..passes.emit import block_nodes, emit_blocks, owned_parameters, shared_constants
from ..passes.node_cost import node_cost
from ..passes.partition import additive_cost, first_saves, storage_cost
from ..passes.replace import Replacement, choose, fuse, identical_runs
from ..passes.sharing import Tied, detached_notes, parameter_uses, planned_uses, shared_spans, trainable_per_position
from ..passes.trace import LeafSpec, trace
from ..passes.units import find_layers, find_units
from ..recipes.base import Boundary, GraphInfo, Recipe, SplitParts
from ..recipes.merge import MergeKind, merge_for
from ..recipes.split import Split, make_heads
from ..recipes.task import LossFn, carry_criterion, infer_task
from .balance import Method, choose_path, held_tensors
from .block_rows import block_row, model_name
from .boundaries import boundary, readable
from .closed_cuts import why_closed, why_not_at
from .legality import check_saves, holds_unit, offer_cuts, require_trainable, trainable_blocks, whole_layers
from .outputs import loss_without_gradient, output_notes
from .scopes import split_point_cut
from .simulate import last_loss, step_peaks, summed
from .step_peak import e2e_peak, local_peak
from .tail import find_tail


class _LocalLoss(nn.Module):
    """Merge + aux head + recipe loss as one module, so the aux probe can swap in fake parameters."""

    def __init__(self, recipe: Recipe, merge: nn.Module, head: nn.Module, inputs: tuple):
        super().__init__()
        self.recipe, self.merge, self.head, self.inputs = recipe, merge, head, inputs

    def forward(self, features: tuple, target: torch.Tensor) -> torch.Tensor:
        return self.recipe.local_loss(self.head, self.merge(*features), target, self.inputs)


def _traced(model: nn.Module, inputs: tuple, leaf_modules: Sequence[LeafSpec], replace, replace_mode: str,
            max_cut_tensors: int | None, auto_leaf: bool):
    """The bound graph, its cost probe and schedule, with RepL fused in when asked for, and the
    trainable parameters the forward reads before RepL (one it never uses is trained by no loss)."""
    gm = trace(model, inputs, leaf_modules, auto_leaf)
    read = {id(p): p for n in gm.graph.nodes for p in node_parameters(gm, n)}
    trainable = sum(p.numel() for p in read.values() if p.requires_grad)  # before fuse freezes what RepL replaces
    probe = cost_pass.probe(gm, inputs)
    sched = schedule(probe.graph, max_cut_tensors)
    replacement = Replacement()
    if replace is not None:
        units = find_units(model, probe, sched)
        replacement = choose(identical_runs(model, probe, sched, units), replace)
        if replacement.replaced:
            fuse(gm, model, probe, sched, replacement, units, replace_mode)
            probe = cost_pass.probe(gm, inputs)
            sched = schedule(probe.graph, max_cut_tensors)
    return gm, probe, sched, replacement, trainable


def _check_blocks(num_blocks: int, planner: Planner) -> None:
    sched: Schedule = planner.sched
    if num_blocks < 1:
        raise PlanError(f"num_blocks must be at least 1, got {num_blocks}")
    if num_blocks > len(sched.cuts) + 1:
        why = why_closed(planner.gm, planner.probe.graph, sched, planner.uses, planner.replacement.triples,
                         planner.inputs, planner.name)
        if planner.unread:
            example = next(iter(planner.unread.values()))
            why += (f"\n{len(planner.unread)} more cut points hand over what the heads of recipe "
                    f"{planner.recipe.name!r} for the {planner.task.kind} task cannot read, e.g. {example}.")
        raise PlanError(
            f"{planner.name} has {len(sched.cuts)} legal cut points, so num_blocks can be at most "
            f"{len(sched.cuts) + 1} (asked for {num_blocks}).\n{why}", max_blocks=len(sched.cuts) + 1)


class Planner:
    """Everything about one model that does not depend on K: trace, costs, legal cuts, aux costs.

    ``plan(num_blocks)`` then partitions for any K, so a memory budget can try several K cheaply."""

    def __init__(
        self,
        model: nn.Module,
        inputs: tuple[torch.Tensor, ...],
        *,
        method: str,
        recipe: Recipe,
        num_classes: int | None,
        leaf_modules: Sequence[LeafSpec],
        replace: int | Sequence[str] | None,
        replace_mode: str,
        max_cut_tensors: int | None,
        tolerance: float,
        auto_leaf: bool = True,
        optimizer: str = "adamw",
        loss_fn: LossFn | None = None,
        example_target: torch.Tensor | None = None,
        tied: str = "together",
    ):
        if method not in {m.value for m in Method}:
            raise PlanError(f"unknown method {method!r}; choose one of {', '.join(m.value for m in Method)} or pass "
                            "split_points=")
        method = Method(method)
        self.model, self.inputs, self.method, self.recipe, self.tolerance = model, inputs, method, recipe, tolerance
        self.optimizer = optimizer
        self._e2e_peak: int | None = None
        self.name = type(model).__name__
        gm, probe, sched, self.replacement, self.trainable_before = _traced(
            model, inputs, leaf_modules, replace, replace_mode, max_cut_tensors, auto_leaf)
        self.gm, self.probe, G, self.found_cuts = gm, probe, probe.graph, sched.cuts  # before the rules choose
        self.task = infer_task(probe.outputs, example_target, tuple(inputs[0].shape), loss_fn, num_classes)
        # A cut's several tensors are pooled together only where the heads predict vectors.
        self.merge = recipe.traits.merge if self.task.pools else MergeKind.MAP
        self.uses = planned_uses(parameter_uses(gm, G, sched), Tied(tied))
        sched, self.layouts, self.shared = offer_cuts(sched, G, self.replacement, shared_spans(self.uses),
                                                      tuple(inputs[0].shape[-2:]) if inputs[0].dim() == 4 else None,
                                                      gm)
        self.graph = GraphInfo(model, find_units(model, probe, sched), traced=gm, inputs=inputs)
        layers = find_layers(model, G, sched)  # between any offered cuts, multi-tensor ones too
        sched, self.unread = readable(sched, self.layouts, G, self.task, inputs, recipe, self.merge, self.graph)
        self.sched = sched
        if recipe.traits.copies_layers:  # only recipes copying the model's layers read its task head
            self.graph.tail = find_tail(gm, G, sched, self.layouts, self.graph)
        self.aux = AuxProbe(probe, inputs, self.task.target)
        self.last_loss = last_loss(self.task, probe.outputs)
        self.final_loss = self.aux.output_loss(self.last_loss) if self.last_loss is not None else {}
        self.bounds = [0, *(c.position for c in sched.cuts), len(sched.order)]
        # Blocks that train something (split_points may make any); the partition's hold a whole layer too.
        self.trainable = trainable_blocks(trainable_per_position(self.uses, gm, len(sched.order)), self.bounds)
        self.whole = holds_unit(layers, self.bounds)
        self._aux_costs: list[AuxCost] | None = None
        self._notes: list[str] = []  # the last plan's notes on its blocks (a whole layer each, heads within them)

    def _boundaries(self, num_blocks: int) -> list[Boundary]:
        G = self.probe.graph
        return [boundary(c, self.layouts[c.position], G, num_blocks, self.task, self.inputs, self.merge)
                for c in self.sched.cuts]

    def _probed(self, boundaries: list[Boundary]) -> list[Boundary]:
        """The boundaries whose heads are costed for the partition: as cut 0 (the heads do not depend
        on K's depth schedule in structure), or for a cascade, whose cut 0 has no head and is never
        charged (:meth:`Recipe.held`), as a later cut's."""
        if not self.recipe.traits.cascade:
            return boundaries
        return [dataclasses.replace(b, index=1, num_blocks=3) for b in boundaries]

    def _aux_cost(self, j: int, boundary: Boundary) -> AuxCost:
        """Merge + aux head + loss at cut ``j`` (an index into ``sched.cuts``) for ``boundary``."""
        recipe, graph = self.recipe, self.graph

        def build() -> nn.Module:
            merge = merge_for(boundary.parts, self.merge)[0]
            return _LocalLoss(recipe, merge, carry_criterion(recipe.make_head(boundary, graph)), self.aux.inputs)

        key = (recipe.head_key(boundary, graph), boundary.index)
        return self.aux.cost(self.sched.cuts[j].nodes, key, build)

    def plan(self, num_blocks: int, split_points: Sequence[str] | None = None,
             stage_cuts: Sequence[int] = ()) -> Split:
        """The split into ``num_blocks`` blocks (or right after ``split_points``), with its report.
        ``stage_cuts`` (positions of offered cuts) are kept as cuts, and the blocks are balanced
        within the ranges between them: pipeline stages placed first."""
        sched, G, name = self.sched, self.probe.graph, self.name
        if not self.recipe.traits.split:
            num_blocks, split_points = 1, None
        chosen = None
        if split_points is not None:
            chosen = sorted({split_point_cut(p, sched, G, name, self.unread, lambda q: why_not_at(
                q, self.gm, G, sched, self.uses, self.replacement.triples, self.inputs, name), self.found_cuts)
                for p in split_points})
            num_blocks = len(chosen) + 1
        _check_blocks(num_blocks, self)
        check_saves(self.recipe, num_blocks)
        boundaries = self._boundaries(num_blocks)
        (ok, layers_note), heads_note = whole_layers(self.trainable, self.whole, num_blocks, name), None
        if num_blocks == 1:
            path = [0, len(self.bounds) - 1]
        elif chosen is not None:
            path = [0, *(i + 1 for i in chosen), len(self.bounds) - 1]
            require_trainable(self.trainable, path, name)
        else:
            if self._aux_costs is None and self.method in (Method.MEMORY, Method.FLOPS):
                self._aux_costs = [self._aux_cost(j, b) for j, b in enumerate(self._probed(boundaries))]
            path, heads_note = choose_path(self.method, self.recipe, num_blocks, self.probe, sched,
                                           self._aux_costs or [], self.final_loss, ok, self.tolerance, name,
                                           [self.bounds.index(p) for p in stage_cuts])
        self._notes = [n for n in (layers_note, heads_note) if n]
        return self._split(path, boundaries, "split_points" if chosen is not None else self.method)

    def _split(self, path: list[int], boundaries: list[Boundary], method: str) -> Split:
        """The blocks between ``path``'s boundaries, emitted with their heads and merges (bound to the
        user's model: what convert trains), their chosen cuts re-probed at their depth, and the report."""
        gm, sched, recipe = self.gm, self.sched, self.recipe
        cut_ids = [j - 1 for j in path[1:-1]]
        chosen = tuple(dataclasses.replace(boundaries[j], index=k) for k, j in enumerate(cut_ids))
        cuts = tuple(sched.cuts[j] for j in cut_ids)
        ends = [self.bounds[j] for j in path]
        nodes = tuple(tuple(block_nodes(gm, self.probe.graph, sched, start, end)) for start, end in pairwise(ends))
        baked = shared_constants(nodes, sched.baked)
        blocks = emit_blocks(gm, nodes, cuts, baked)
        # Only cascades run a block without its input detach.
        attached = emit_blocks(gm, nodes, cuts, baked, detach_input=False) if recipe.traits.cascade else ()
        heads = make_heads(recipe, chosen, self.graph, self.model)
        merges = tuple(merge_for(b.parts, self.merge)[0] for b in chosen)
        params = owned_parameters(gm, nodes)
        parts = SplitParts(blocks, heads, self.last_loss or summed, self.model, merges, attached)
        chosen_aux = [self._aux_cost(j, b) for j, b in zip(cut_ids, chosen, strict=True)]
        report = self._report(method, ends, cuts, chosen_aux, nodes, params, parts)
        return Split(report, gm, recipe, self.graph, chosen, cuts, nodes, baked, blocks, attached, heads, merges,
                     params, self.probe.outputs, self.task)

    def _report(self, method: str, ends: list[int], cuts: Sequence[Cut], chosen_aux: list[AuxCost],
                nodes: Sequence[Sequence[fx.Node]], params: Sequence[Sequence[nn.Parameter]],
                parts: SplitParts) -> SplitPlan:
        """The report of the blocks between positions ``ends``, one local step of ``parts`` simulated."""
        gm, sched, G, model = self.gm, self.sched, self.probe.graph, self.model
        num_blocks = len(nodes)
        costs = [node_cost(G, v) for v in sched.order]
        saves = [c.saved for c in costs]
        storages = G.graph["storages"]
        held = held_tensors(self.probe, sched)
        handed = [held[self.bounds.index(e)] for e in ends]
        with_aux = storage_cost(saves, storages, ends, [{}, *(a.saves for a in chosen_aux), self.final_loss], handed)
        backbone = storage_cost(saves, storages, ends, None, handed)
        flops = additive_cost([c.flops for c in costs], ends)
        estimate = [self.recipe.step_bytes(with_aux, backbone, k) for k in range(num_blocks)]
        repl = getattr(gm, "repl", nn.Module())
        saved, unsimulated = step_peaks(self.aux, parts, self.recipe, repl, estimate)
        everything = (*model.parameters(), *repl.parameters())
        # A parameter the forward never uses gets no gradient and no optimizer state: not trainable here.
        used = {id(p) for block in params for p in block}
        unused = [p for p in everything if id(p) not in used]
        if self._e2e_peak is None:
            self._e2e_peak = e2e_peak(self.aux, gm, parts.loss_fn, self.optimizer, unused) or 0
        try:
            step = local_peak(self.aux, parts, self.recipe, repl, self.optimizer, unused) or []
        except RuntimeError as err:
            clearer = loss_without_gradient(gm, nodes, err, self.name)
            if clearer is None:
                raise
            raise clearer from err
        step = step if len(step) == num_blocks else [max(step, default=0)] * num_blocks
        blocks = [
            block_row(k, nodes[k], G, start, end, sum(p.numel() for p in params[k]), int(saved[k]),
                      int(flops[k, k + 1]), chosen_aux[k] if k < len(cuts) else None,
                      cuts[k] if k < len(cuts) else None, step[k], int(backbone[k, k + 1]),
                      int(with_aux[k, k + 1] - backbone[k, k + 1]))
            for k, (start, end) in enumerate(pairwise(ends))
        ]
        heads = sum(a.params for a in chosen_aux)
        trainable = [p for p in everything if p.requires_grad and id(p) in used]
        itemsize = next((p.element_size() for p in trainable), 4)
        return SplitPlan(
            model=model_name(model),
            num_blocks=num_blocks,
            method=method,
            recipe=self.recipe.name,
            input_shapes=[list(x.shape) for x in self.inputs],
            blocks=blocks,
            # the final loss may save an output the graph saves already (a level an op reads): once
            e2e_saved_bytes=int(sum(storages.values())
                                + sum(b for k, b in self.final_loss.items() if k not in storages)),
            local_peak_bytes=max(b.saved_bytes for b in blocks),
            total_params=sum(p.numel() for p in model.parameters()),
            legal_cuts=len(sched.cuts),
            positions=len(sched.order),
            replaced=self.replacement.replaced,
            replace_skipped=self.replacement.skipped,
            trainable_params_before=self.trainable_before,
            trainable_params=sum(p.numel() for p in trainable),
            shared_parameters=self.shared,
            auto_leaves=dict(gm.meta.get("auto_leaves", {})),
            param_bytes=weight_bytes(everything) + heads * itemsize,
            trainable_bytes=weight_bytes(trainable) + heads * itemsize,
            saved_profile=[int(b) for b in first_saves(saves, storages)],
            simulation_error=unsimulated,
            optimizer=self.optimizer,
            step_peak_bytes=max(step),
            e2e_step_peak_bytes=self._e2e_peak,
            notes=[*(self._notes if method != "split_points" else []), *detached_notes(gm, nodes),
                   *output_notes(gm, nodes, self.probe.outputs, self.name)],
        )
