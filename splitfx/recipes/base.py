"""What a local-learning recipe is: aux-head generator + local loss + per-step hooks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Boundary:
    """What an aux head is generated from: the tensor handed over at the end of block ``index``."""

    index: int
    num_blocks: int
    shape: tuple
    dtype: torch.dtype
    layout: str
    num_classes: int
    input_shape: tuple


class Recipe:
    """Base recipe: one aux head per non-final block, cross-entropy on its logits."""

    name = "base"
    paper = ""

    def make_head(self, boundary: Boundary) -> nn.Module:
        raise NotImplementedError

    def head_key(self, boundary: Boundary) -> Hashable:
        """Boundaries with equal keys get structurally identical heads (the planner probes one)."""
        return boundary.shape, boundary.layout

    def local_loss(self, head: nn.Module, features: torch.Tensor, target: torch.Tensor, inputs: tuple) -> torch.Tensor:
        return F.cross_entropy(head(features), target)

    def after_step(self, split_module: Any) -> None:
        """Called once after each optimizer step (EMA updates live here)."""
