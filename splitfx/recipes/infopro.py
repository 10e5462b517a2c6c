"""``infopro`` / ``infopro_supcon``: InfoPro (Wang, Ni, Song, Yang, Huang, ICLR 2021).

Published: two heads per cut, a decoder with a reconstruction loss and the "1c2f" classifier
(conv3×3 → BN → ReLU → GAP → Linear(128) → ReLU → Linear(classes), or → 128-d features for SupCon
at temperature 0.07); loss = λ1·recon + λ2·task, λ1 and λ2 linear in the cut index over K−2 between
endpoints the public scripts tune per K. Defaults: ``lambda1=(5, 0)``, ``lambda2=(0, 1)`` (their
ResNet-110 K=8 script; K=16 uses ``lambda2=(0, 1)`` with ``lambda1=(5, 0.5)``). Options:
``lambda1``, ``lambda2`` as (first cut, last cut) or one number for both.

Departures, and why:
- The decoder reduces channels with a 1×1 conv before upsampling in ×2 stages (the authors'
  ImageNet decoder, generalised in :mod:`.decoders`), not the CIFAR decoder's upsample-first: that
  one holds C·H·W floats per image and makes the aux head the step's memory peak at 224².
- The reconstruction target is the input as given (the paper's is the un-normalised image, which
  splitfx does not see) and the loss is MSE, not Sigmoid + BCELoss (not autocast-safe).
- A term whose λ is 0 at a cut is left out there (no decoder at the last cut by default): it would
  add memory and only zero gradients. Where no reconstruction is possible (a token sequence that is
  not a grid, a vector, a non-image input) the head is the classifier alone, at weight λ2 (1 where
  λ2 is 0).
- Cuts are splitfx's memory-balanced plan (it automates the hand-tuned "InfoPro*" splits); the
  classifier reads token grids with the model's prefix tokens dropped.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..base.errors import PlanError
from .base import Boundary, GraphInfo, Recipe, RecipeTraits
from .decoders import ImageDecoder, can_reconstruct
from .heads import Classifier, imagenet_sized, supcon
from .layout import Layout, MapSpec
from .predict import predict
from .registry import register_recipe
from .task import TaskKind, scoring
from .values import between, endpoints, some_term


class InfoProHead(nn.Module):
    """Decoder (when λ1 > 0 and the map can be decoded) + ``classifier()`` (when its weight > 0: the
    head predicting what the task's loss reads). ``weights`` holds the weight of each term present."""

    def __init__(self, spec: MapSpec, shape, image_shape, recon: float, task: float,
                 classifier: Callable[[], nn.Module], contrast: bool = False):
        super().__init__()
        decodable = can_reconstruct(spec, image_shape)
        if not decodable:
            recon, task = 0.0, task or 1.0
        self.weights = {name: w for name, w in (("recon", recon), ("task", task)) if w}
        self.decoder = ImageDecoder(spec, shape, image_shape) if recon else None
        self.classifier = classifier() if task else None
        self.contrast = contrast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def terms(self, features: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.decoder is not None:
            out["recon"] = self.decoder.loss(features, image)
        if self.classifier is not None:
            z = self.classifier(features)
            out["task"] = supcon(z, target) if self.contrast else scoring(self.classifier)(z, target)
        return out

    def loss(self, features: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        terms = self.terms(features, target, image)
        return sum(self.weights[name] * value for name, value in terms.items())


def classifier(boundary: Boundary, graph: GraphInfo, shape, layout: Layout, convs: int = 1,
               contrast: bool = False) -> Callable[[], nn.Module]:
    """What builds an InfoPro-style head's classifier on features of ``shape``/``layout``: "1c2f"
    (``convs=2``: HPFF's "2c2f") for class or vector outputs, the task's head otherwise
    (:func:`~.predict.predict`), or (``contrast``) SupCon's 128-d features."""
    spec = graph.spec(shape, layout, boundary.input_shape)

    def vector(n: int) -> nn.Module:
        return Classifier(spec, shape, n, convs, imagenet=imagenet_sized(boundary.input_shape))

    if contrast:
        if boundary.task is not None and boundary.task.kind != TaskKind.CLASSES:
            raise PlanError(f"SupCon contrasts class labels; this model's task is {boundary.task.kind}: use infopro")
        return lambda: vector(128)
    return lambda: predict(boundary, graph, shape, layout, vector)


class Lambdas(Recipe):
    """A recipe whose loss weighs terms by λ1, λ2 interpolated from the first cut to the last."""

    every_cut = True  # every cut's loss needs a term with λ > 0 (False: the recipe adds another term)

    def __init__(self, lambda1=(5.0, 0.0), lambda2=(0.0, 1.0)):
        self.lambda1, self.lambda2 = endpoints("lambda1", lambda1), endpoints("lambda2", lambda2)
        if self.every_cut:
            some_term(self.lambda1, self.lambda2)

    def weights(self, boundary: Boundary) -> tuple[float, float]:
        """(λ1, λ2) at this cut: linear in the cut index over K−2, as the public code."""
        return between(self.lambda1, boundary.depth), between(self.lambda2, boundary.depth)


@register_recipe("infopro")
class InfoPro(Lambdas):
    paper = "Wang et al., ICLR 2021"
    traits = RecipeTraits(uses_inputs=True)  # the decoder reconstructs the model's input
    contrast = False

    def infopro_head(self, boundary: Boundary, graph: GraphInfo, shape, layout: Layout) -> InfoProHead:
        """InfoPro's heads on a tensor of ``shape``/``layout`` (the boundary itself, or MAN's copies)."""
        spec = graph.spec(shape, layout, boundary.input_shape)
        return InfoProHead(spec, shape, boundary.input_shape, *self.weights(boundary),
                           classifier(boundary, graph, shape, layout, contrast=self.contrast), self.contrast)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        return self.infopro_head(boundary, graph, boundary.shape, boundary.layout)

    def local_loss(self, head, features, target, inputs):
        return head.loss(features, target, inputs[0])


@register_recipe("infopro_supcon")
class InfoProSupCon(InfoPro):
    """InfoPro with the supervised contrastive loss (temperature 0.07) on 128-d features."""

    contrast = True
