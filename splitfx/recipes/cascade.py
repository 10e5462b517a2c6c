"""Recipes with a cascade path: loss k also trains block k-1 through block k.

``hpff``: Hierarchical local learning with Patch Feature Fusion (Su et al., ECCV 2024).
Loss k = wx·L(aux_k(B_k(x))) + wy·L(aux_k(B_k(B_{k−1}(x_{k−1})))) with (wx, wy) = (0.001, 0.999),
the CIFAR setting; the last block uses the model's own head for both paths. Patch feature fusion:
the aux input is split into 2×2 spatial patches (4 token runs for sequences), the aux classifier
runs on each and the logits are averaged. Departures: the aux classifier is InfoPro's "1c2f" without
its decoder, and fusion is applied to it (the public code fuses only in the decoder).

``mlaan``: Multilaminar Leap Augmented Auxiliary Network (Zhang et al., 2024).
Independent path: pool + Linear on B_k(x). Cascade path through the leap module (LAM): a learnable
copy of the next backbone layer summed with its EMA copy, then a learnable copy of a later layer
(halfway between the cut and the end; MLAAN hand-picks it), then pool + Linear; same (wx, wy).
Every EMA copy is updated after every step (the public code updates only the last one on CIFAR).

Both forward every block twice per step, as the public code does; activation memory of a step is
that of two consecutive blocks, which the plan's per-block figures include.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .auglocal import sampled_chain
from .base import Boundary, GraphInfo, Recipe, SplitParts, handed
from .copies import EMA, weight_copy
from .heads import Classifier1c2f, PoolLinear, adapter, patches
from .layout import channels, infer_layout
from .registry import register_recipe


class Cascade(Recipe):
    cascade = True

    def __init__(self, wx: float = 0.001, wy: float = 0.999):
        self.wx, self.wy = wx, wy

    def reaches(self, k: int) -> tuple[int, ...]:
        return (k - 1, k) if k else (k,)

    def cascade_loss(self, head, features, cascaded, target) -> torch.Tensor:
        raise NotImplementedError

    def local_loss(self, head, features, target, inputs):
        """Both paths on the same features: what the planner probes for the aux cost."""
        return self.cascade_loss(head, features, features, target)

    def step_bytes(self, with_aux: np.ndarray, backbone: np.ndarray, k: int) -> float:
        """A cascade step also holds block k once more (second path) and block k-1's activations;
        at k = 0 the second path is the aux head run again on the same features."""
        if k == 0:
            return float(2 * with_aux[0, 1] - backbone[0, 1])
        return float(2 * with_aux[k, k + 1] + backbone[k - 1, k])

    def losses(self, parts: SplitParts, inputs: tuple, target: torch.Tensor) -> Iterator[torch.Tensor]:
        h, prev = inputs, None
        last = len(parts.blocks) - 1
        for k, block in enumerate(parts.blocks):
            out = block(*h)
            # Block k without its input detach, on block k-1's fresh output: gradient reaches both.
            cascaded = parts.attached[k](*handed(parts.blocks[k - 1](*prev))) if k else out
            if k == last:
                yield self.wx * parts.loss_fn(out, target) + self.wy * parts.loss_fn(cascaded, target)
            else:
                merge = parts.merges[k]
                yield self.cascade_loss(parts.heads[k], merge(*handed(out)), merge(*handed(cascaded)), target)
                prev, h = h, tuple(t.detach() for t in handed(out))
            del out, cascaded


class PatchFusion(nn.Module):
    def __init__(self, layout: str, classifier: nn.Module):
        super().__init__()
        self.layout = layout
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.classifier(p) for p in patches(x, self.layout)]).mean(0)


@register_recipe("hpff")
class HPFF(Cascade):
    paper = "Su et al., ECCV 2024"

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        return PatchFusion(boundary.layout, Classifier1c2f(boundary.layout, boundary.shape, boundary.num_classes))

    def cascade_loss(self, head, features, cascaded, target):
        return self.wx * F.cross_entropy(head(features), target) + self.wy * F.cross_entropy(head(cascaded), target)


class _FirstWithEMA(nn.Module):
    """A learnable copy of a backbone layer plus its EMA copy (LAM's first leap layer)."""

    def __init__(self, source_name: str, source: nn.Module, momentum: float, bridge: nn.Module):
        super().__init__()
        self.source = source_name
        self.bridge = bridge
        self.copy = weight_copy(source)
        self.ema = EMA(source, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bridge(x)
        return self.copy(x) + self.ema(x)


class LeapHead(nn.Module):
    """MLAAN's aux: ``linear`` for the independent path, ``first`` → ``rest`` (LAM) for the cascade."""

    def __init__(self, linear: nn.Module, first: nn.Module, rest: nn.Module):
        super().__init__()
        self.linear, self.first, self.rest = linear, first, rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def leap(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(x))

    def ema_sources(self):
        return [(self.first.ema, self.first.source)] if isinstance(self.first, _FirstWithEMA) else []


@register_recipe("mlaan")
class MLAAN(Cascade):
    paper = "Zhang et al., 2024"
    needs_units = True

    def __init__(self, wx: float = 0.001, wy: float = 0.999, momentum: float = 0.995):
        super().__init__(wx, wy)
        self.momentum = momentum

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        linear = PoolLinear(boundary.layout, channels(boundary.shape, boundary.layout), boundary.num_classes)
        after = graph.units_after(boundary.position)
        hw = boundary.input_shape[-2:]
        bridge = (adapter(boundary.shape, boundary.layout, after[0].in_shape, infer_layout(after[0].in_shape, hw))
                  if after else None)
        if bridge is not None:
            first = after[0]
            lead = _FirstWithEMA(first.name, graph.model.get_submodule(first.name), self.momentum, bridge)
            start = Boundary(boundary.index, boundary.num_blocks, first.out_shape, boundary.dtype,
                             infer_layout(first.out_shape, hw), boundary.num_classes, boundary.input_shape)
            later = after[1:][len(after[1:]) // 2: len(after[1:]) // 2 + 1]
            layers, shape, layout = sampled_chain(start, graph, later, weight_copy)
        else:
            lead, layers, shape, layout = nn.Identity(), [], boundary.shape, boundary.layout
        rest = nn.Sequential(*layers, PoolLinear(layout, channels(shape, layout), boundary.num_classes))
        return LeapHead(linear, lead, rest)

    def cascade_loss(self, head, features, cascaded, target):
        return (self.wx * F.cross_entropy(head.linear(features), target)
                + self.wy * F.cross_entropy(head.leap(cascaded), target))
