"""Where the model keeps a tensor's channels, read from the graph: first (NCL, NCHW, NCDHW) or last
(NLC, NHWC, NDHWC).

Convolutions, batch/instance/group norms and pooling read and make channels-first tensors;
``Linear``, ``LayerNorm``/``RMSNorm`` over the last dim and ``MultiheadAttention`` channels-last
ones. A tensor is judged by the nearest such ops: its producer and its users, then, one step further
each time, through the elementwise ops that keep its shape (activations, dropout, residual adds,
scaling) around it. The first step that finds any decides, if its ops agree; no op within reach, or
ops that disagree, and the graph says nothing (None).
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Iterable

import networkx as nx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import batchnorm, pooling
from torch.nn.modules.dropout import _DropoutNd

from .node_cost import node_cost

_FIRST_MODULES = (nn.modules.conv._ConvNd, batchnorm._NormBase, nn.GroupNorm, pooling._AvgPoolNd,
                  pooling._MaxPoolNd, pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd)
_FIRST_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                    F.batch_norm, F.instance_norm, F.group_norm, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d}
_NORMS_LAST = (nn.LayerNorm, nn.RMSNorm)
_LAST_FUNCTIONS = {F.linear, F.layer_norm, F.rms_norm}

_ELEMENTWISE_MODULES = (nn.Identity, _DropoutNd, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                        nn.Hardsigmoid, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus)
_ELEMENTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
                          operator.isub, operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
                          torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish,
                          F.hardsigmoid, F.leaky_relu, F.elu, F.dropout}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "relu", "relu_", "sigmoid",
                        "tanh", "clone", "contiguous"}
_STEPS = 8  # how far from the tensor an op may be and still decide


@functools.cache
def _drop_path() -> tuple[type, ...]:
    try:
        from timm.layers import DropPath
    except ImportError:
        return ()
    return (DropPath,)


def _says(gm: fx.GraphModule, node: fx.Node) -> bool | None:
    """Whether ``node``'s op reads and makes channels-last tensors (True), channels-first (False), or
    neither (None)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, _FIRST_MODULES):
            return False
        if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
            return True
        if isinstance(module, _NORMS_LAST) and len(module.normalized_shape) == 1:
            return True
        return None
    if node.op != "call_function":
        return None
    if node.target in _FIRST_FUNCTIONS:
        return False
    if node.target in _LAST_FUNCTIONS:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        return node.target is F.linear or (isinstance(dims, (list, tuple)) and len(dims) == 1) or None
    return None


def _elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (*_ELEMENTWISE_MODULES, *_drop_path()))
    if node.op == "call_method":
        return node.target in _ELEMENTWISE_METHODS
    return node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS


def channels_last_in(gm: fx.GraphModule, G: nx.DiGraph, names: Iterable[str]) -> dict[str, bool | None]:
    """Whether the model keeps each tensor of ``names`` channels-last (True) or channels-first
    (False), by the nearest ops that say (module docstring); None where the graph does not say."""
    nodes = {n.name: n for n in gm.graph.nodes}
    return {name: _nearest(gm, G, nodes[name]) for name in names}


def _nearest(gm: fx.GraphModule, G: nx.DiGraph, start: fx.Node) -> bool | None:
    shape = node_cost(G, start.name).shape
    seen, ring = {start}, [start]
    for _ in range(_STEPS):
        found = {_says(gm, node) for node in ring}
        found |= {_says(gm, user) for node in ring for user in node.users
                  if user.args and user.args[0] is node}
        found.discard(None)
        if found:
            return found.pop() if len(found) == 1 else None
        # the same shape through an elementwise op: the same layout
        near = [user for node in ring for user in node.users if _elementwise(gm, user)]
        near += [arg for node in ring if _elementwise(gm, node) for arg in node.all_input_nodes]
        ring = [n for n in dict.fromkeys(near) if n not in seen and node_cost(G, n.name).shape == shape]
        if not ring:
            return None
        seen.update(ring)
    return None
