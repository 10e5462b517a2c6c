"""The cost graph's per-node record: what the cost pass measured about one fx node.

A cost graph (:func:`splitfx.passes.cost.probe`) is a ``networkx.DiGraph`` with one node per fx node,
in fx order, and an edge from each input to its user. Each node's only payload is a frozen
:class:`NodeCost`, read with :func:`node_cost`: passes read typed fields instead of string-keyed
attributes, and a pass that learns more about a node makes a new record (``dataclasses.replace``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch

_COST = "cost"  # the networkx attribute holding a node's record; read only through node_cost


@dataclass(frozen=True)
class NodeCost:
    """What one fx node is and costs, from one fake run and the batch-size probe."""

    op: str  # the fx opcode: placeholder, get_attr, call_module, call_function, call_method, output
    target: str  # the fx target as a string ("model.layer1.0.conv1", "<built-in function add>")
    scope: str = ""  # FQN of the user's module the node belongs to ("" outside any)
    cls: str = ""  # class name of that module
    saved: tuple[int, ...] = ()  # storage keys the node saves for backward (bytes in graph.graph["storages"])
    out_bytes: int = 0  # bytes of the tensors it outputs
    param_bytes: int = 0  # bytes of the parameters first used here
    flops: int = 0  # forward FLOPs
    is_tensor: bool = False  # whether its output is one tensor
    shape: tuple[int, ...] | None = None  # that tensor's shape
    dtype: torch.dtype | None = None  # that tensor's dtype
    value: Any = None  # a plain constant (ints, floats, bools, None, lists and tuples of them) as made
    random: bool = False  # whether it draws random numbers
    batch_int: bool = False  # an int equal to the batch size (recomputed after a cut)
    static: bool = False  # a plain constant the batch size does not change (baked into blocks)
    batch_dim0: bool = False  # a tensor whose dim 0 is the batch (or a whole multiple of it: batch_fold)
    batch_fold: int = 1  # dim 0 is batch_fold × the batch (a spiking model's T time steps ride on it)


def node_cost(G: nx.DiGraph, name: str) -> NodeCost:
    """The record of node ``name`` of cost graph ``G``."""
    return G.nodes[name][_COST]


def cost_graph(costs: Mapping[str, NodeCost], edges: Iterable[tuple[str, str]]) -> nx.DiGraph:
    """A cost graph: ``costs``'s nodes in their order, each carrying its record, and ``edges``."""
    G = nx.DiGraph()
    G.add_nodes_from((name, {_COST: cost}) for name, cost in costs.items())
    G.add_edges_from(edges)
    return G
