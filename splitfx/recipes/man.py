"""``man``: Momentum Auxiliary Network (Su et al., ECCV 2024; MAN++ 2026).

Published: at each cut the aux input is ``y = s·LB(x) + (2−s)·EMA(x)``: LB a learnable copy of the
next backbone block (initialised from its weights), EMA an exponential moving average of that same
block (θ ← m·θ + (1−m)·θ_next after every step, m = 0.995), s a learnable scalar starting at 1
(MAN++). Then InfoPro's heads (decoder + "1c2f") with MAN's own λ: its code interpolates λ by
*stage* index, so λ1 ≈ 4–5 and λ2 ≈ 0.4–0.5 at every cut on CIFAR (a fixed 5 / 0.75 on ImageNet),
not InfoPro's schedule to λ1 = 0. For ViTs (MAN++): LB copies the next two blocks, EMA the first,
and the head is LayerNorm → Linear on the class token. Defaults: ``lambda1=(5, 5)``,
``lambda2=(0.5, 0.5)``, ``momentum=0.995``, ``recompute=True``; options ``lambda1``, ``lambda2``,
``momentum``, ``recompute``.

Departures, and why:
- λ is held at the first stage's values (5, 0.5) at every cut: splitfx's cuts are not tied to
  stages, and the public code's drift (4.9 → 3.9 over three stages) is an artefact of its indexing.
- "The next block" is the next repeated unit of the backbone (:meth:`GraphInfo.repeated`), not the
  whole next gradient-isolated block, so the aux cost stays one layer whatever K is. Where the cut
  falls inside a layer, the next whole layer is used behind an adapter (:func:`~.copies.bridge`);
  with no layer after the cut (after the last block), the head is InfoPro's alone (same λ).
- Token boundaries (NLC) take the MAN++ ViT head whatever the model (class token when the model has
  prefix tokens, else the mean token), with cross-entropy alone: METHODS lists no reconstruction for it.
- The public code's ``--momentum`` default of 1.0 (an EMA that never moves) is refused.
- ``recompute=True`` (default): LB and EMA are recomputed in backward (:mod:`.recompute`) and ``y`` is formed as
  ``2·EMA + s·(LB − EMA)``: the same function and gradients (tested against ``recompute=False``, the
  published form), but a head keeps its InfoPro part and one feature map instead of two copies of
  a residual block's activations, which at a stage-1 cut of an ImageNet ResNet cost more than the
  block it trains. The copies run forward twice (again in backward; :mod:`.recompute`), their
  BatchNorm statistics moving once per step as published.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Boundary, Follows, GraphInfo, RecipeTraits
from .copies import EMA, bridge, chain, weight_copy
from .heads import Scored
from .infopro import InfoPro
from .layout import Layout, follow, prefix_tokens
from .predict import predict
from .recompute import recomputed
from .registry import register_recipe
from .values import flag
from .values import momentum as check_momentum


class TokenClassifier(nn.Module):
    """MAN++'s ViT head: LayerNorm → Linear on the class token (the mean token without one)."""

    def __init__(self, width: int, num_classes: int, class_token: bool):
        super().__init__()
        self.class_token = class_token
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x[:, 0] if self.class_token else x.mean(1)))


class MomentumHead(Follows):
    """``y = s·LB(bridge(x)) + (2−s)·EMA(bridge(x))``, then ``head`` (InfoPro's or MAN++'s token head).

    With ``recompute``, LB and EMA are :func:`~.recompute.recomputed` (the same outputs and
    gradients, their inner activations recomputed in backward instead of kept), and ``y`` is computed
    as ``2·EMA + s·(LB − EMA)``, which keeps one tensor for the gradient of ``s`` instead of the two
    copies' outputs. Without it, as published: the copies' outputs are kept by their own last op
    anyway."""

    def __init__(self, source: str, module: nn.Module, lb: nn.Module, head: nn.Module, momentum: float,
                 bridge: nn.Module, recompute: bool = True):
        super().__init__()
        self.source = source
        self.bridge = bridge
        self.lb = lb
        self.ema = EMA(module, momentum)
        self.scale = nn.Parameter(torch.ones(()))
        self.head = head
        self.recompute = recompute

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bridge(x)
        if not self.recompute:
            return self.scale * self.lb(x) + (2 - self.scale) * self.ema(x)
        lb, ema = recomputed(self.lb, x), recomputed(self.ema, x)
        return 2 * ema + self.scale * (lb - ema)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def loss(self, features, target, image):
        return self.head.loss(self.features(features), target, image)


@register_recipe("man")
class MAN(InfoPro):
    paper = "Su et al., ECCV 2024 (MAN), MAN++ 2026"
    traits = RecipeTraits(uses_inputs=True, copies_layers=True, ema=True)

    def __init__(self, lambda1=(5.0, 5.0), lambda2=(0.5, 0.5), momentum: float = 0.995, recompute: bool = True):
        super().__init__(lambda1, lambda2)
        self.momentum = check_momentum(momentum)
        self.recompute = flag("recompute", recompute)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        after = graph.repeated_after(boundary.position)
        if not after:
            return super().make_head(boundary, graph)
        unit, shape = after[0], boundary.input_shape
        hw = shape[-2:]
        want = follow(unit.in_shape, hw, boundary.shape, boundary.layout)
        module, layout = graph.model.get_submodule(unit.name), follow(unit.out_shape, hw, unit.in_shape, want)
        spec = graph.spec(boundary.shape, boundary.layout, shape)
        link = bridge(spec, boundary.shape, boundary.layout, unit.in_shape, want)
        if layout == Layout.NLC:  # MAN++ on tokens: LB = the next two blocks when they keep the shape
            two = [u for u in after[:2] if u.in_shape == unit.in_shape and u.out_shape == unit.out_shape]
            start = graph.spec(unit.in_shape, layout, shape)
            lb = nn.Sequential(*chain(two, graph, start, unit.in_shape, shape, weight_copy)[0])
            head = Scored(predict(boundary, graph, unit.out_shape, layout, lambda n: TokenClassifier(
                unit.out_shape[-1], n, prefix_tokens(graph.model) > 0)))
        else:
            lb = weight_copy(module)
            head = self.infopro_head(boundary, graph, unit.out_shape, layout)
        return MomentumHead(unit.name, module, lb, head, self.momentum, link, self.recompute)
