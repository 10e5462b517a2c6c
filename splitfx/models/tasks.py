"""Small networks for the embedded tasks beyond classification (``splitfx tasks``): a segmentation
net, an EDSR-style super-resolution net, two MLP regressors (residual; plain ReLU, the Forward-Forward
papers') and a character-level causal transformer.
Each is written without shape reads or tied weights, so it splits as it is."""
from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ConvBlock(nn.Module):
    """A residual block of two 3×3 convs (ResNet's basic block)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class SegNet(nn.Module):
    """Stride-2 stem, ``depth`` residual blocks at half resolution, 1×1 classifier, ×2 bilinear:
    ``[B, 3, H, W]`` → ``[B, classes, H, W]`` scores per pixel."""

    def __init__(self, classes: int = 4, width: int = 32, depth: int = 6):
        super().__init__()
        self.stem = conv_bn_relu(3, width, stride=2)
        self.blocks = nn.Sequential(*[ConvBlock(width) for _ in range(depth)])
        self.classifier = nn.Conv2d(width, classes, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.classifier(self.blocks(self.stem(x))))


class ResidualSR(nn.Module):
    """EDSR's residual block: conv → ReLU → conv, scaled by 0.1, no normalisation."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.body(x)


class EDSR(nn.Module):
    """EDSR-baseline shape (Lim et al. 2017): head conv, residual blocks, body conv with a global skip,
    upsampler (conv + PixelShuffle) and a conv to the image: ``[B, c, H, W]`` → ``[B, c, sH, sW]``."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 6, scale: int = 2):
        super().__init__()
        self.head = nn.Conv2d(channels, width, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualSR(width) for _ in range(depth)])
        self.body_end = nn.Conv2d(width, width, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(width, width * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
        self.tail = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.tail(self.upsample(self.body_end(self.body(x)) + x))


class DenseLayer(nn.Module):
    """Linear → LayerNorm → GELU with a skip: one repeated layer of the regressor."""

    def __init__(self, width: int):
        super().__init__()
        self.fc, self.norm, self.act = nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.fc(x)))


class MLPRegressor(nn.Module):
    """``[B, features]`` → ``[B]``: an input projection, ``depth`` residual dense layers, one output."""

    def __init__(self, features: int = 10, width: int = 64, depth: int = 6):
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.layers = nn.Sequential(*[DenseLayer(width) for _ in range(depth)])
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(self.inp(x))).squeeze(-1)


class ReLULayer(nn.Module):
    """Linear → ReLU: one layer of :class:`MLP` (a module of its own, so a plan cuts between layers)."""

    def __init__(self, features: int, width: int):
        super().__init__()
        self.fc, self.act = nn.Linear(features, width), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class MLP(nn.Module):
    """``[B, features]`` → ``[B]``: ``depth`` layers of Linear → ReLU, then a Linear to one value: the
    network of the Forward-Forward papers (FFR trains it at ``num_blocks=depth``: one block per layer,
    the output layer in the last). ``pretrained_cfg`` gives its input size, as timm's models do."""

    def __init__(self, features: int = 10, width: int = 256, depth: int = 8, outputs: int = 1):
        super().__init__()
        self.layers = nn.Sequential(*[ReLULayer(features if i == 0 else width, width) for i in range(depth)])
        self.out = nn.Linear(width, outputs)
        self.pretrained_cfg = {"input_size": (features,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.layers(x))
        return y.squeeze(-1) if self.out.out_features == 1 else y


def mlp8(features: int = 10, num_classes: int = 1, width: int = 256) -> MLP:
    """The 8-layer MLP regressor, one value per sample (``num_classes`` values: ``[B, num_classes]``):
    ``splitfx train splitfx.models:mlp8 --data diabetes --recipe ffr --blocks 8``."""
    return MLP(features, width, 8, num_classes)


def mlp32(features: int = 10, num_classes: int = 1, width: int = 256) -> MLP:
    """The 32-layer MLP regressor (``--blocks 32`` for FFR)."""
    return MLP(features, width, 32, num_classes)


class CausalBlock(nn.Module):
    """A pre-norm transformer block with causal self-attention over a fixed context of ``context``."""

    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.register_buffer("mask", torch.full((context, context), float("-inf")).triu(1), persistent=False)
        self.split = (context, heads, width // heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, self.split[1:]).transpose(1, 2) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        att = (q @ k.transpose(-2, -1) * self.split[2] ** -0.5 + self.mask).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class CharGPT(nn.Module):
    """A character-level causal language model: ``[B, T]`` token ids → ``[B, T, vocab]`` scores."""

    def __init__(self, vocab: int, width: int = 64, heads: int = 4, depth: int = 4, context: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, context, width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[CausalBlock(width, heads, context) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.blocks(self.embed(tokens) + self.pos)))
