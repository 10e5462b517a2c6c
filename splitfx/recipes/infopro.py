"""``infopro`` / ``infopro_supcon``: InfoPro (Wang, Ni, Song, Yang, Huang, ICLR 2021).

Two heads per cut: a decoder (bilinear upsample to the input size → conv3×3 → BN → ReLU → conv3×3
→ image channels) with a reconstruction loss, and the "1c2f" classifier (conv3×3 → BN → ReLU → GAP
→ Linear(128) → ReLU → Linear(classes), or → 128-d features for SupCon at temperature 0.07).
Loss = λ1·recon + λ2·task, λ1 going linearly 5 → 0 and λ2 0.5 → 1 from the first to the last cut
(the public code's ixx/ixy for CIFAR).

Departures: the reconstruction target is the input as given (the paper's is the un-normalised image,
which splitfx does not see) and the loss is MSE, not Sigmoid + BCELoss (which is not autocast-safe);
cut placement is splitfx's memory-balanced plan, which automates the hand-tuned "InfoPro*" splits;
token boundaries are reshaped to their square grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Boundary, GraphInfo, Recipe
from .heads import Classifier1c2f, Decoder, supcon
from .registry import register_recipe


class InfoProHead(nn.Module):
    def __init__(self, layout: str, shape, image_shape, num_classes: int, depth: float, contrast: bool):
        super().__init__()
        self.recon_weight = 5.0 * (1.0 - depth)
        self.task_weight = 0.5 + 0.5 * depth
        self.decoder = Decoder(layout, shape, image_shape) if self.recon_weight else None
        self.classifier = Classifier1c2f(layout, shape, 128 if contrast else num_classes)
        self.contrast = contrast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def loss(self, features: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        z = self.classifier(features)
        task = supcon(z, target) if self.contrast else F.cross_entropy(z, target)
        if self.decoder is None:
            return self.task_weight * task
        recon = F.mse_loss(self.decoder(features).float(), image.float())
        return self.recon_weight * recon + self.task_weight * task


@register_recipe("infopro")
class InfoPro(Recipe):
    paper = "Wang et al., ICLR 2021"
    contrast = False

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        return InfoProHead(boundary.layout, boundary.shape, boundary.input_shape, boundary.num_classes,
                           boundary.depth, self.contrast)

    def local_loss(self, head, features, target, inputs):
        return head.loss(features, target, inputs[0])


@register_recipe("infopro_supcon")
class InfoProSupCon(InfoPro):
    contrast = True
