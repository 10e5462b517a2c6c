"""``glcan``: Global-Local Collaborative Auxiliary Network (Zhu et al., 2024).

Published (abstracts; no official code): each aux net has a local branch and a global branch, built
per task; the first local learning shown on detection and super-resolution. Read as in
``../shared/METHODS.md`` (unverified, from related code of the same group): the local branch is a few
light conv layers adapting the block's features, the global branch a copy of the model's own task
head trained with the real task loss; the group's super-resolution code (verified) makes each aux
head conv3×3 ×3 → the model's upsampler → conv to the image, scored with L1. Inference drops them.

Here: head = local branch (``convs`` × [conv3×3 → ReLU] on maps, at most 256 wide, with a 1×1 conv
back to the cut's width when narrower; per-token LayerNorm → Linear → GELU on sequences) → a bridge
to the tail's input where the shapes differ (:func:`~.copies.bridge`) → a copy of the model's own
task head (:mod:`splitfx.planner.tail`: what runs after its last repeated layer), its weights copied
when the head is built; scored with the task's loss (the user's ``loss_fn``, or the task's default).
Option: ``convs`` (default 3, the super-resolution code's).

Departures, and why: the global branch is found in the graph, not written per task; where the model
has none (no repeated layer, or nothing trainable after it) the head is the task's own
(:func:`~.predict.predict` over a pooled Linear), and the plan's recipe still says ``glcan``; signals
and volumes (``NCL``, ``NCDHW``) get no local convs. The feature bank of the paper's later versions
is not built.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base.errors import PlanError
from .base import Boundary, GraphInfo, Recipe, RecipeTraits
from .copies import bridge
from .heads import PoolLinear, _Permuted
from .layout import Layout, channels
from .predict import predict
from .registry import register_recipe
from .task import TaskKind
from .values import count

LOCAL_WIDTH = 256  # the widest local branch: a copy of a 2048-wide stage's convs would outweigh its block


def local_branch(shape, layout: Layout, convs: int) -> nn.Module:
    """GLCAN's local branch on a tensor of ``shape``/``layout``, keeping its shape."""
    c = channels(shape, layout)
    if layout == Layout.NLC:
        return nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU())
    if layout not in (Layout.NCHW, Layout.NHWC) or not convs:
        return nn.Identity()
    width = min(c, LOCAL_WIDTH)
    layers = [nn.Conv2d(c if i == 0 else width, width, 3, 1, 1) for i in range(convs)]
    net = nn.Sequential(*[m for conv in layers for m in (conv, nn.ReLU())],
                        *([nn.Conv2d(width, c, 1)] if width < c else []))
    return net if layout == Layout.NCHW else _Permuted(net)


class GlobalLocal(nn.Module):
    """Local branch → bridge → copy of the model's task head."""

    def __init__(self, local: nn.Module, link: nn.Module, tail: nn.Module):
        super().__init__()
        self.local, self.link, self.tail = local, link, tail

    def forward(self, x: torch.Tensor):
        return self.tail(self.link(self.local(x)))


@register_recipe("glcan")
class GLCAN(Recipe):
    paper = "Zhu et al., 2024"
    traits = RecipeTraits(copies_layers=True)

    def __init__(self, convs: int = 3):
        self.convs = count("convs", convs, 0)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        tail, task = graph.tail, boundary.task
        if tail is None:
            return predict(boundary, graph, boundary.shape, boundary.layout,
                           lambda n: PoolLinear(boundary.layout, channels(boundary.shape, boundary.layout), n))
        if task is not None and task.kind == TaskKind.CLASSES and not task.scores and task.loss_fn is None:
            raise PlanError("glcan's global branch predicts the model's own output, which is not class scores; pass "
                            "loss_fn= to score it")
        spec = graph.spec(boundary.shape, boundary.layout, boundary.input_shape)
        head = GlobalLocal(local_branch(boundary.shape, boundary.layout, self.convs),
                           bridge(spec, boundary.shape, boundary.layout, tail.shape, tail.layout), tail.build())
        if task is not None:  # scored with the loss of the model's own output (task.scoring)
            head.__dict__["criterion"] = task.loss
        return head
