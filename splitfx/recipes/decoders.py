"""Reconstruction decoders (InfoPro, MAN, HPFF): features → image, channels reduced before upsampling.

InfoPro's CIFAR decoder upsamples all C feature channels to the image size before its first conv;
at 224² that is C·H·W floats per image (≈100 MB at C = 512) and makes the aux head, not the block,
the memory peak. The authors' ImageNet decoder first reduces channels with a 1×1 conv (to 128),
then doubles the resolution in stages, narrowing as it grows (28² → 56²: 32 → 112²: 12 → 224²: 3).
:class:`Decoder` is that decoder for any map size and image size: a 1×1 conv → BN → ReLU at the
map's own resolution, then per ×2 stage a bilinear upsample and conv3×3 → BN → ReLU, widths 64
(¼ of the image size and coarser), 32 (¼), 12 (½), and a last conv3×3 to the image channels at the
image size. The 1×1 conv reduces to 128 channels when three or more stages follow (the authors'
choice), else straight to the first stage's width, so no wide tensor is ever upsampled.
"""
from __future__ import annotations

from collections.abc import Sequence
from math import ceil, log2

import torch
import torch.nn.functional as F
from torch import nn

from .heads import conv_bn_relu
from .layout import MapSpec
from .recompute import runner

REDUCED = 128  # channels after the 1×1 conv when three or more ×2 stages follow (InfoPro's ImageNet decoder)


def stage_width(j: int) -> int:
    """Channels of the stage at 1/2^j of the image size (InfoPro's ImageNet decoder: 12, 32, then 64)."""
    return {1: 12, 2: 32}.get(j, 64)


def upsamplings(in_hw: Sequence[int], out_hw: Sequence[int]) -> int:
    """How many ×2 stages take a map of ``in_hw`` to ``out_hw`` (0 when it is already as large)."""
    ratio = max(out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    return max(0, ceil(log2(ratio) - 1e-9)) if ratio > 1 else 0


class Decoder(nn.Module):
    """A map of ``channels``×``in_hw`` → an image of ``out_channels``×``out_hw`` (see module docstring)."""

    def __init__(self, channels: int, in_hw: Sequence[int], out_hw: Sequence[int], out_channels: int = 3):
        super().__init__()
        s = upsamplings(in_hw, out_hw)
        first = REDUCED if s >= 3 else stage_width(max(s, 1))
        self.reduce = conv_bn_relu(channels, min(channels, first), kernel=1)
        width = min(channels, first)
        self.sizes = [(ceil(out_hw[0] / 2**j), ceil(out_hw[1] / 2**j)) for j in range(s - 1, 0, -1)]
        stages = []
        for j in range(s - 1, 0, -1):
            stages.append(conv_bn_relu(width, stage_width(j)))
            width = stage_width(j)
        self.stages = nn.ModuleList(stages)
        self.out_hw = tuple(out_hw)
        self.out = nn.Conv2d(width, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        for size, stage in zip(self.sizes, self.stages, strict=True):
            x = stage(F.interpolate(x, size=size, mode="bilinear", align_corners=True))
        if tuple(x.shape[-2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=True)
        return self.out(x)


def can_reconstruct(spec: MapSpec, image_shape: Sequence[int]) -> bool:
    """A decoder needs image geometry on both sides: a spatial map and a 4-D image input."""
    return spec.spatial and len(image_shape) == 4


def reconstruction(decoded: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """MSE in float32 (the public code's Sigmoid + BCELoss is not autocast-safe)."""
    return F.mse_loss(decoded.float(), image.float())


class _FromMap(nn.Module):
    """A reconstruction head reading a boundary of ``shape`` as the C×H×W map ``spec`` makes of it."""

    def __init__(self, spec: MapSpec, shape: Sequence[int]):
        super().__init__()
        self.spec = spec
        self.map_shape = spec.map_shape(shape)


class ImageDecoder(_FromMap):
    """InfoPro's decoder: the whole boundary map → the whole input image."""

    def __init__(self, spec: MapSpec, shape: Sequence[int], image_shape: Sequence[int]):
        super().__init__(spec, shape)
        c, h, w = self.map_shape
        self.decoder = Decoder(c, (h, w), image_shape[-2:], image_shape[-3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.spec(x))

    def loss(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return reconstruction(self(features), image)


def quadrants(x: torch.Tensor) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right of the last two dims (HPFF's patch split)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]


class PatchDecoder(_FromMap):
    """HPFF's patch feature fusion as its public code implements it: four decoders, each
    reconstructing one image quadrant from the same quadrant of the feature map; the four
    reconstruction losses are summed.

    With ``recompute`` (default), each quadrant's decoder is recomputed in backward on its own
    (:mod:`.recompute`), so the head keeps the four reconstructions and no decoder activations, and
    backward holds one quadrant's at a time: the memory the paper claims for patch fusion. Run whole
    (``recompute=False``, as the public code), the four quadrants keep as much as one decoder of the
    whole map, which is why the authors' fusion on and off agree in memory (METHODS.md)."""

    def __init__(self, spec: MapSpec, shape: Sequence[int], image_shape: Sequence[int], recompute: bool = True):
        super().__init__(spec, shape)
        self.recompute = recompute
        c, h, w = self.map_shape
        maps = quadrants(torch.empty(1, c, h, w, device="meta"))
        images = quadrants(torch.empty(image_shape[-3:], device="meta"))
        self.decoders = nn.ModuleList(
            Decoder(c, m.shape[-2:], i.shape[-2:], image_shape[-3]) for m, i in zip(maps, images, strict=True)
        )

    @staticmethod
    def fits(spec: MapSpec, shape: Sequence[int], image_shape: Sequence[int]) -> bool:
        """Whether the map has four non-empty quadrants (at least 2×2) and the input is an image."""
        return can_reconstruct(spec, image_shape) and min(spec.map_shape(shape)[1:]) >= 2

    def loss(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        parts = zip(self.decoders, quadrants(self.spec(features)), quadrants(image), strict=True)
        run = runner(self.recompute)
        return torch.stack([reconstruction(run(decoder, m), i) for decoder, m, i in parts]).sum()
