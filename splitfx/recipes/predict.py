"""The end of every aux head: the module that turns a cut's features into what the task's loss
reads, and the loss it is scored with.

A recipe builds its own vector head (``vector(n)``: InfoPro's "1c2f", DGL's MLP-SR, a pooled
Linear) and calls :func:`predict`, which returns exactly that for classification (bit for bit as
before tasks existed) and otherwise the head the output's shape calls for (:class:`~.task.TaskKind`):
the same vector head for ``[B, D]`` values, a per-token LayerNorm → Linear for sequences (no pooling across
tokens, so a causal model's head sees no future token), InfoPro's segmentation head for maps
(conv3×3 → BN → ReLU → conv1×1, bilinear upsampling to the output's size), conv + PixelShuffle for
images, and one such head per leaf of a dict, tuple or list. The task's loss travels with the
module (:func:`~.task.scoring`), so a recipe's ``local_loss`` scores any task the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..base.errors import PlanError
from .base import Boundary, GraphInfo
from .heads import conv_bn_relu
from .layout import Layout, MapSpec
from .task import Task, TaskKind, TensorSpec, leaf_kind

DENSE_WIDTH = 256  # the widest hidden map of a dense head (InfoPro's segmentation head keeps C up to this)


class DenseHead(nn.Module):
    """A map → ``[B, C, H, W]``: conv3×3 → BN → ReLU → conv1×1 (``light``: conv1×1 alone), then
    bilinear upsampling to the output's size."""

    def __init__(self, spec: MapSpec, shape: Sequence[int], out: Sequence[int], light: bool = False):
        super().__init__()
        self.spec, self.size = spec, tuple(out[2:])
        c = spec.map_shape(shape)[0]
        if light:
            self.net = nn.Conv2d(c, out[1], 1)
        else:
            width = min(c, DENSE_WIDTH)
            self.net = nn.Sequential(conv_bn_relu(c, width), nn.Conv2d(width, out[1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(self.spec(x))
        return y if y.shape[2:] == self.size else F.interpolate(y, self.size, mode="bilinear", align_corners=False)


class ImageHead(nn.Module):
    """A map → an image ``[B, c, sH, sW]``: conv3×3 to c·s² channels and PixelShuffle(s) where the
    output is an integer s× the map, else conv3×3 to c and bilinear resizing."""

    def __init__(self, spec: MapSpec, shape: Sequence[int], out: Sequence[int]):
        super().__init__()
        self.spec, self.size = spec, tuple(out[2:])
        c, h, w = spec.map_shape(shape)
        (oh, ow), s = self.size, out[2] // h
        shuffle = oh % h == 0 and ow % w == 0 and oh // h == ow // w
        s = s if shuffle else 1
        self.net = nn.Sequential(nn.Conv2d(c, out[1] * s * s, 3, padding=1), nn.PixelShuffle(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(self.spec(x))
        return y if y.shape[2:] == self.size else F.interpolate(y, self.size, mode="bilinear", align_corners=False)


class TokenHead(nn.Module):
    """``[B, T, C]`` tokens → ``[B, T, V]``: LayerNorm → Linear per position (a language model's own
    head: a mid-network residual stream is not normalised), never mixing positions."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class Squeezed(nn.Module):
    """A ``[B, 1]`` head as the ``[B]`` output it imitates."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).squeeze(-1)


class Structured(nn.Module):
    """One head per tensor of a dict, tuple or list output, returning the same structure."""

    def __init__(self, leaves: Sequence[nn.Module], spec):
        super().__init__()
        self.leaves = nn.ModuleList(leaves)
        self.treespec = spec

    def forward(self, x: torch.Tensor):
        return tree_unflatten([head(x) for head in self.leaves], self.treespec)


def _unreadable(task: Task, out: TensorSpec, spec: MapSpec, shape: Sequence[int], layout: Layout) -> str | None:
    """Why no built-in head predicts ``out`` from a cut handing over ``shape``/``layout``; None if one does."""
    kind = leaf_kind(out, task.input_shape)
    if not out.floating:
        return (f"the output {list(out.shape)} is {out.dtype}, which no aux head can predict; return only floating "
                "outputs in training, or write a recipe for it")
    if kind == TaskKind.TOKENS and (layout != Layout.NLC or shape[1] != out.shape[1]):
        return (f"a per-token head needs the {out.shape[1]} tokens whole, and the cut hands over {list(shape)} "
                f"({layout})")
    if kind in (TaskKind.DENSE, TaskKind.IMAGE) and not spec.spatial:
        return f"the output {list(out.shape)} is a map, and the cut hands over {list(shape)} ({layout}), no map"
    return None


def unreadable(task: Task, spec: MapSpec, shape: Sequence[int], layout: Layout) -> str | None:
    """Why the task's head cannot read a cut handing over ``shape``/``layout`` (the planner offers no
    such cut); None where it can."""
    if task.pools:
        return None
    leaves = tree_flatten(task.output)[0]
    return next((why for leaf in leaves if isinstance(leaf, TensorSpec)
                 for why in [_unreadable(task, leaf, spec, shape, layout)] if why), None)


def _leaf(task: Task, out: TensorSpec, spec: MapSpec, shape: Sequence[int], layout: Layout,
          vector: Callable[[int], nn.Module], light: bool, where: str) -> nn.Module:
    why = _unreadable(task, out, spec, shape, layout)
    if why is not None:
        raise PlanError(f"{where}: {why}; cut elsewhere (split_points=), or write a recipe for it")
    kind = leaf_kind(out, task.input_shape)
    if kind == TaskKind.REGRESSION:
        return vector(out.shape[1]) if len(out.shape) == 2 else Squeezed(vector(1))
    if kind == TaskKind.TOKENS:
        return TokenHead(shape[-1], out.shape[-1])
    if kind == TaskKind.IMAGE:
        return ImageHead(spec, shape, out.shape)
    return DenseHead(spec, shape, out.shape, light)


def predict(boundary: Boundary, graph: GraphInfo, shape: Sequence[int], layout: Layout,
            vector: Callable[[int], nn.Module], light: bool = False) -> nn.Module:
    """What an aux head at ``boundary`` ends in, reading features of ``shape``/``layout``: ``vector(n)``
    (the recipe's own head to n values) for classification and vector outputs, else the head the
    task's output calls for (``light``: the cheapest, for the ``linear`` recipe). Tagged with the
    task's :attr:`~.task.Task.head_loss` unless that is the default cross-entropy on classes."""
    task = boundary.task
    if task is None or task.head_loss is None:
        return vector(boundary.num_classes)
    where = f"the aux head at cut {boundary.index}"
    spec = graph.spec(shape, layout, boundary.input_shape)
    if task.kind == TaskKind.CLASSES:
        head = vector(task.classes)
    elif isinstance(task.output, TensorSpec):
        head = _leaf(task, task.output, spec, shape, layout, vector, light, where)
    else:
        leaves, tree = tree_flatten(task.output)
        if not all(isinstance(leaf, TensorSpec) for leaf in leaves):
            raise PlanError(f"{where}: the model's output holds values that are not tensors; return tensors only")
        head = Structured([_leaf(task, leaf, spec, shape, layout, vector, light, where) for leaf in leaves], tree)
    head.__dict__["criterion"] = task.head_loss  # not a submodule: nothing of it in state_dict or .to()
    return head
