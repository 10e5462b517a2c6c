"""What each cut's aux head is built from (:class:`~splitfx.recipes.base.Boundary`), and the cuts
whose tensors the task's heads can read at all."""
from __future__ import annotations

import dataclasses

import networkx as nx

from ..passes.cuts import Cut, Schedule
from ..passes.node_cost import node_cost
from ..recipes.base import Boundary, GraphInfo
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
                    task)


def readable(sched: Schedule, layouts: dict, G: nx.DiGraph, task: Task, inputs: tuple, merge: MergeKind,
             graph: GraphInfo) -> tuple[Schedule, list[str]]:
    """The cuts whose tensors the task's heads can read (a sequence whole for per-token heads, a map
    for dense ones), and why each other one cannot be read."""
    kept, unread = [], []
    for c in sched.cuts:
        b = boundary(c, layouts[c.position], G, 2, task, inputs, merge)
        why = unreadable(task, graph.spec(b.shape, b.layout, b.input_shape), b.shape, b.layout)
        (unread if why else kept).append(why or c)
    return dataclasses.replace(sched, cuts=kept), unread
