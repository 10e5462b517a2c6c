"""Tiny hand-built models for the per-pass unit tests (tests/test_pass_*.py).

Each one exercises a graph shape the passes must handle: a plain chain, a residual add with one
in-place ReLU module called twice, a two-branch concat, a parameter read through ``get_attr``, a
class token expanded to the batch size, and a non-batch int crossing the graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """x → fc1 → act1 → fc2 → act2 → fc3: a chain with a cut after every layer."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 8)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


class Residual(nn.Module):
    """relu(x + conv2(relu(conv1(x)))) with one in-place ReLU module used twice."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.relu(x + self.conv2(self.relu(self.conv1(x))))


class Branchy(nn.Module):
    """stem → in-place act → Sequential of identical residual blocks → concat of two 1x1 branches →
    learned per-channel scale (a parameter read via get_attr) → mean pool → fc."""

    def __init__(self, depth: int = 2, c: int = 4, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.layers = nn.Sequential(*[Residual(c) for _ in range(depth)])
        self.left = nn.Conv2d(c, c // 2, 1)
        self.right = nn.Conv2d(c, c - c // 2, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, c).view(1, c, 1, 1))
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.layers(x)
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = x * self.scale
        return self.fc(x.mean((2, 3)))


class Shared(nn.Module):
    """Linear → BatchNorm → ReLU, a residual add, one Linear module applied twice, a matmul with a
    parameter read via get_attr, and a concat of two branches."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.shared = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8, 4))
        self.left = nn.Linear(8, 2)
        self.right = nn.Linear(8, 2)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.inp(x)))
        h = h + torch.tanh(self.shared(h))
        h = self.shared(h)
        h = torch.cat([self.left(h), self.right(h), h @ self.w], 1)
        return self.out(F.gelu(h))


class Tokens(nn.Module):
    """ViT-like: B = x.shape[0] at the top, a class token expanded to B, a position embedding
    computed from a parameter alone (free: ``pos * 2``)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 4, 8))
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        batch = x.shape[0]
        x = self.embed(x)
        x = torch.cat([self.cls.expand(batch, -1, -1), x], 1) + self.pos * 2
        x = torch.relu(self.mix(x))
        return self.head(x[:, 0])


class Width(nn.Module):
    """An int that is not the batch size (``x.shape[1]``) stays live until the end: a shape constant."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(24, 3)

    def forward(self, x):
        n = x.shape[1]
        x = self.b(torch.relu(self.a(x)))
        return self.c(x.reshape(-1, n * 6))


class MLPBlock(nn.Module):
    """x ± fc2(relu(bn(fc1(x)))); ``sub=True`` has the same parameters but another graph."""

    def __init__(self, c: int = 8, sub: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(c, c)
        self.bn = nn.BatchNorm1d(c)
        self.fc2 = nn.Linear(c, c)
        self.sub = sub

    def forward(self, x):
        h = self.fc2(torch.relu(self.bn(self.fc1(x))))
        return x - h if self.sub else x + h


class Stack(nn.Module):
    """stem → Sequential of residual MLP blocks → head; ``blocks`` may be given."""

    def __init__(self, blocks=None, c: int = 8):
        super().__init__()
        self.stem = nn.Linear(6, c)
        self.blocks = nn.Sequential(*(blocks if blocks is not None else [MLPBlock(c) for _ in range(5)]))
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class Rotary(nn.Module):
    """A table built from the input's shape alone (like a rotary embedding for the patch grid) and
    read by every layer: free, so cuts between the layers hand over only the tokens."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(depth))
        self.head = nn.Linear(8, 3)
        self.register_buffer("freq", torch.linspace(0.1, 1.0, 8))

    def forward(self, x):
        table = torch.cos(torch.arange(x.shape[1])[:, None] * self.freq)
        x = self.embed(x)
        for layer in self.layers:
            x = x + torch.relu(layer(x * table))
        return self.head(x.mean(1))


@torch.fx.wrap
def jitter(positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Positions stretched by one random factor in [1/scale, scale] (a wrapped call, as timm's)."""
    return positions * torch.empty(1).uniform_(1 / scale, scale)


class AugmentedRotary(Rotary):
    """Rotary whose positions are jittered at random in training only, in the model's own forward
    (as sapiens2's rotary coordinate augmentation): one draw per forward, which every layer shares."""

    def forward(self, x):
        positions = torch.arange(x.shape[1])[:, None].float()
        if self.training:
            positions = jitter(positions, 2.0)
        table = torch.cos(positions * self.freq)
        x = self.embed(x)
        for layer in self.layers:
            x = x + torch.relu(layer(x * table))
        return self.head(x.mean(1))


class GridTable(nn.Module):
    """A table built for the H×W grid and read by layers that see only H·W tokens: at another grid
    of as many tokens (2×8 for 4×4) the handed-over shapes match but the table does not."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(depth))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        _, _, h, w = x.shape
        table = (torch.arange(h)[:, None] * 10 + torch.arange(w)).reshape(h * w, 1).float()
        x = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = x + torch.relu(layer(x * table))
        return self.head(x.mean(1))


class HalfBatch(nn.Module):
    """An int computed from the batch size that happens to be equal at batch 2 and 3 (B // 2)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        half = x.shape[0] // 2
        x = self.b(torch.relu(self.a(x)))
        return self.c(x) + torch.arange(half).float().sum()


def mask_of(x):
    """Like timm's ``create_attention_mask`` on a dense image: no padding, so no mask (None)."""
    return None


def masked(x, mask):
    return x if mask is None else x * mask


torch.fx.wrap("mask_of")
torch.fx.wrap("masked")


class NoMask(nn.Module):
    """A None made from the input and read by every layer: a constant no cut needs to hand over."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(depth))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        mask = mask_of(x)
        x = self.embed(x)
        for layer in self.layers:
            x = x + torch.relu(layer(masked(x, mask)))
        return self.head(x.mean(1))


def size_of(x):
    """A list of a tensor's sizes, made outside the graph (like mvitv2's feature size)."""
    return list(x.shape[1:])


torch.fx.wrap("size_of")


class Placement(nn.Module):
    """Reads the input's dtype before the layers and uses it after them: under autocast or on another
    device it is not what it was when planned. ``grow`` appends to a size list after it is made."""

    def __init__(self, grow: bool = False):
        super().__init__()
        self.grow = grow
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        if self.grow:
            sizes = size_of(x)
            sizes.append(1)
            x = self.b(torch.relu(self.a(x)))
            return self.c(x.reshape(-1, sizes[1]))
        dtype = x.dtype
        x = self.b(torch.relu(self.a(x)))
        return self.c(x) + torch.zeros(3, dtype=dtype)


class ShapeChecks(nn.Module):
    """Control flow on shapes, as gemma4_vit's: on the input's rank and width, on an intermediate
    tensor's length, and a factory given traced sizes one by one (``torch.ones(B, L)``)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.layers = nn.ModuleList(nn.Linear(3, 3) for _ in range(3))
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError("expected an image")
        if x.shape[-1] % 2 != 0:
            raise ValueError("the width must be even")
        x = self.norm(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = x + torch.relu(layer(x))
        if x.shape[1] > 8:
            x = x[:, ::2]
        mask = torch.ones(x.shape[0], x.shape[1], dtype=x.dtype)
        return self.head((x * mask[..., None]).mean(1))


class Positions(nn.Module):
    """An integer tensor (patch positions, batch in dim 0) made at the start and read at the end: it
    crosses every cut, and no aux head can read it."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.table = nn.Embedding(16, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        positions = torch.arange(x.shape[1]).expand(x.shape[0], -1) + x.new_zeros(x.shape[:2], dtype=torch.long)
        for layer in self.layers:
            x = x + torch.relu(layer(x))
        return self.head((x + self.table(positions)).mean(1))


def small_cnn(num_classes: int = 10) -> nn.Module:
    """Two conv → ReLU layers and a linear readout: what ``splitfx train tests.tinynets:small_cnn`` builds."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


class Exchange(nn.Module):
    """One HRNet module in miniature: two residual blocks on each resolution, then each branch adds
    the other's map resized to its own."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(Residual(c), Residual(c)),
                                       nn.Sequential(Residual(2 * c), Residual(2 * c))])
        self.up = nn.Conv2d(2 * c, c, 1)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)

    def forward(self, high, low):
        high, low = self.branches[0](high), self.branches[1](low)
        return high + F.interpolate(self.up(low), scale_factor=2.0), low + self.down(high)


class TwoResolutions(nn.Module):
    """HRNet in miniature: a single-resolution stage of four residual blocks, then two resolutions run
    side by side through ``depth`` exchange modules, so that every cut after the split hands over both
    (and the residual blocks there start and end at two-tensor cuts)."""

    def __init__(self, depth: int = 3, c: int = 4, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.layer1 = nn.Sequential(*[Residual(c) for _ in range(4)])
        self.to_high, self.to_low = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.stages = nn.Sequential(*[Exchange(c) for _ in range(depth)])
        self.fc = nn.Linear(3 * c, classes)

    def forward(self, x):
        x = self.layer1(torch.relu(self.stem(x)))
        high, low = torch.relu(self.to_high(x)), torch.relu(self.to_low(x))
        for stage in self.stages:
            high, low = stage(high, low)
        return self.fc(torch.cat([high.mean((2, 3)), low.mean((2, 3))], 1))


class PixelBlock(nn.Module):
    """One TNT block in miniature: the pixel tokens (the batch folded ``patches``× in dim 0) pass an MLP,
    are projected into their patch's token, and the patch tokens pass their own MLP."""

    def __init__(self, c: int = 8, d: int = 16, pixels: int = 16):
        super().__init__()
        self.inner = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))
        self.proj = nn.Linear(pixels * c, d)
        self.outer = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, pixel, patch):
        pixel = pixel + self.inner(pixel)
        patch = patch + self.proj(pixel.reshape(patch.shape[0], patch.shape[1], -1))
        return pixel, patch + self.outer(patch)


class PixelTokens(nn.Module):
    """TNT in miniature on 16×16 images: 4×4 patches of 16 pixel tokens each; every block reads and
    hands on both the pixel tokens, shaped (16·B, 16, c), and the patch tokens, (B, 16, d)."""

    def __init__(self, depth: int = 4, c: int = 8, d: int = 16, classes: int = 5):
        super().__init__()
        self.pixel_embed = nn.Linear(3, c)
        self.patch_embed = nn.Linear(16 * c, d)
        self.blocks = nn.ModuleList(PixelBlock(c, d) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        b = x.shape[0]
        pixels = x.reshape(b, 3, 4, 4, 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(-1, 16, 3)
        pixel = self.pixel_embed(pixels)
        patch = self.patch_embed(pixel.reshape(b, 16, -1))
        for block in self.blocks:
            pixel, patch = block(pixel, patch)
        return self.head(self.norm(patch).mean(1))
