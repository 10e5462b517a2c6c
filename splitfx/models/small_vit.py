"""A small hybrid Vision Transformer for 32×32 inputs, the ViT of the accuracy benchmark.

The hybrid of Dosovitskiy et al. (2021, section 3.1): a convolutional stem makes the tokens, then
timm's ``VisionTransformer`` blocks. The stem is CIFAR ResNet's first stage cut short (a 3×3
convolution, two basic blocks at 16 channels, one to 32 channels at stride 2) and a 2×2 convolution
to width 64, so each of the 64 tokens sees an 8×8 patch through convolutions; then 8 pre-norm blocks
of 4 heads (MLP ratio 2) and global average pooling (no class token): 0.31 M parameters. Plain ViTs
of the same size (4×4 patches, class token or not, with a two-convolution stem or not) stay at chance
on ``--data cluttered`` for 840 steps of AdamW at 3e-4 to 3e-3, where this one reaches 33 % after
300 (docs/design.md, "A harder embedded benchmark").
"""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .cifar_resnet import BasicBlock


def hybrid_vit8(num_classes: int = 10) -> VisionTransformer:
    """Convolutional stem to 8×8 tokens of width 64, then 8 transformer blocks, on 32×32 images."""
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=8, num_heads=4, mlp_ratio=2,
                              num_classes=num_classes, global_pool="avg", class_token=False)
    model.patch_embed.proj = nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        BasicBlock(16, 16), BasicBlock(16, 16), BasicBlock(16, 32, 2),
        nn.Conv2d(32, 64, 2, 2))
    return model
