"""What each cut's aux head is built from (:class:`~splitfx.recipes.base.Boundary`), and the cuts
whose tensors the task's heads can read at all."""
from __future__ import annotations

import dataclasses

import networkx as nx

from ..passes.cuts import Cut, Schedule
from ..passes.node_cost import node_cost
from ..recipes.base import Boundary, GraphInfo, Recipe
from ..recipes.layout import Layout
from ..recipes.merge import MergeKind, merge_for
from ..recipes.predict import unreadable
from ..recipes.task import Task


def boundary(cut: Cut, layouts: tuple[Layout, ...], G: nx.DiGraph, num_blocks: int, task: Task, inputs: tuple,
             merge: MergeKind) -> Boundary:
    """What the aux head at ``cut`` is built from: the merge of the tensors handed over there."""
    parts = tuple(zip(cut.shapes, layouts, strict=True))
    _, shape, layout = merge_for(parts, merge)
    dtype = next(node_cost(G, v).dtype for v, lay in zip(cut.nodes, layouts, strict=True) if lay != Layout.UNREAD)
    return Boundary(0, num_blocks, shape, dtype, layout, task.outputs, tuple(inputs[0].shape), cut.position, parts,
                    task, cut.nodes)


def readable(sched: Schedule, layouts: dict, G: nx.DiGraph, task: Task, inputs: tuple, recipe: Recipe,
             merge: MergeKind, graph: GraphInfo) -> tuple[Schedule, dict[int, str]]:
    """The cuts where ``recipe`` can build a head, and why it cannot at each other one, by position:
    heads that predict the task's output read a sequence whole (per-token heads), a map (dense ones),
    and never a batch folded with time steps or windows; a recipe may refuse more
    (:meth:`~splitfx.recipes.base.Recipe.unreadable`)."""
    kept, unread = [], {}
    for c in sched.cuts:
        why = _folded(c, layouts[c.position], inputs, recipe) if recipe.traits.predicts else None
        if why is None:
            b = boundary(c, layouts[c.position], G, 2, task, inputs, merge)
            why = recipe.unreadable(b, graph)
            if why is None and recipe.traits.predicts:
                why = unreadable(task, graph.spec(b.shape, b.layout, b.input_shape), b.shape, b.layout)
        if why:
            unread[c.position] = why
        else:
            kept.append(c)
    return dataclasses.replace(sched, cuts=kept), unread


def _folded(cut: Cut, layouts: tuple[Layout, ...], inputs: tuple, recipe: Recipe) -> str | None:
    """Why heads predicting the task cannot read ``cut``: the tensors they read (not those handed over
    unread, such as TNT's pixel tokens beside its patch tokens) fold the batch k× (None: they do not)."""
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() else None
    read = [shape for shape, layout in zip(cut.shapes, layouts, strict=True) if layout != Layout.UNREAD]
    folded = next((shape for shape in read if batch and shape and shape[0] != batch), None)
    if folded is None:
        return None
    return (f"the cut hands over {tuple(folded)}, the batch of {batch} folded {folded[0] // batch}× (windows, "
            f"tokens, a spiking model's time steps), which the heads of recipe {recipe.name!r} do not read (a "
            "spiking student's time steps are read by recipe 'tandem')")
