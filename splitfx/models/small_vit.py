"""A small Vision Transformer for 32×32 inputs, the ViT of the accuracy benchmark (docs/benchmarks.md).

timm's ``VisionTransformer`` with 4×4 patches (64 tokens and a class token), width 64, 8 pre-norm
blocks of 4 heads, MLP ratio 2: 0.28 M parameters, about half ResNet-32's step time on a CPU.
Its 8 blocks offer 16 residual cut points, so it splits into K = 2 … 16 like ResNet-32 does
(timm's ``test_vit`` sees a 32² image as 4 tokens and has too few blocks for K = 16).
"""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer


def vit8(num_classes: int = 10) -> VisionTransformer:
    """ViT with 8 blocks of width 64 on 32×32 images in 4×4 patches."""
    return VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=8, num_heads=4, mlp_ratio=2,
                             num_classes=num_classes)
