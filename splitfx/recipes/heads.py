"""Aux-head building blocks shared by the recipes, for any boundary layout."""
from __future__ import annotations

from collections.abc import Sequence
from math import isqrt

import torch
import torch.nn.functional as F
from torch import nn

from .layout import channels, pool


def as_map(x: torch.Tensor, layout: str) -> torch.Tensor:
    """An NCHW map from any layout. Tokens become their square grid (prefix tokens such as CLS or
    distillation tokens are dropped); a token count with no square grid becomes a 1×L map."""
    if layout == "NCHW":
        return x
    if layout == "NHWC":
        return x.permute(0, 3, 1, 2)
    if layout == "NC":
        return x[:, :, None, None]
    n, length, c = x.shape
    side = isqrt(length)
    prefix = length - side * side
    if side and prefix <= 8:
        return x[:, prefix:].transpose(1, 2).reshape(n, c, side, side)
    return x.transpose(1, 2).unsqueeze(2)


def map_shape(shape: Sequence[int], layout: str) -> tuple[int, int, int]:
    """(C, H, W) of ``as_map`` for a boundary of ``shape``."""
    probe = torch.empty(shape, device="meta")
    _, c, h, w = as_map(probe, layout).shape
    return c, h, w


class PoolLinear(nn.Module):
    """Global average pool over all positions, then one Linear."""

    def __init__(self, layout: str, in_channels: int, num_classes: int):
        super().__init__()
        self.layout = layout
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(pool(x, self.layout))


class MLPSR(nn.Module):
    """DGL's aux net: pool to ⌈H/4⌉, n × [1×1 conv, BN, ReLU], pool 2×2, m × [Linear, BN1d, ReLU], Linear."""

    def __init__(self, layout: str, shape: Sequence[int], num_classes: int, n: int = 1, m: int = 1):
        super().__init__()
        self.layout = layout
        c, h, w = map_shape(shape, layout)
        self.pool = nn.AdaptiveAvgPool2d((max(1, -(-h // 4)), max(1, -(-w // 4))))
        self.convs = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()) for _ in range(n)
        ])
        self.pool2 = nn.AdaptiveAvgPool2d(2)
        self.mlp = nn.Sequential(*[
            nn.Sequential(nn.Linear(4 * c, 4 * c, bias=False), nn.BatchNorm1d(4 * c), nn.ReLU()) for _ in range(m)
        ])
        self.fc = nn.Linear(4 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.pool(as_map(x, self.layout)))
        return self.fc(self.mlp(torch.flatten(self.pool2(x), 1)))


class Classifier1c2f(nn.Module):
    """InfoPro's "1c2f": conv3×3 (stride 2 and 2× width on narrow maps) → BN → ReLU → GAP →
    Linear(→hidden) → ReLU → Linear(→out)."""

    def __init__(self, layout: str, shape: Sequence[int], out_features: int, hidden: int = 128):
        super().__init__()
        self.layout = layout
        c, h, w = map_shape(shape, layout)
        narrow = c < 64
        width = 2 * c if narrow else c
        stride = 2 if narrow and min(h, w) >= 4 else 1
        self.conv = nn.Sequential(nn.Conv2d(c, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(as_map(x, self.layout)).mean((2, 3)))


class Decoder(nn.Module):
    """InfoPro's reconstruction decoder: bilinear upsample to the input size → conv3×3 → BN → ReLU
    → conv3×3 → image channels."""

    def __init__(self, layout: str, shape: Sequence[int], image_shape: Sequence[int], width: int = 12):
        super().__init__()
        self.layout = layout
        c = map_shape(shape, layout)[0]
        self.size = tuple(image_shape[-2:])
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, image_shape[-3], 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(as_map(x, self.layout), size=self.size, mode="bilinear", align_corners=True)
        return self.net(x)


def patches(x: torch.Tensor, layout: str, parts: int = 2) -> list[torch.Tensor]:
    """HPFF's patch split: parts×parts spatial patches of a map (token runs for sequences)."""
    if layout == "NC":
        return [x]
    if layout == "NLC":
        return list(x.chunk(parts * parts, dim=1))
    h_dim, w_dim = (2, 3) if layout == "NCHW" else (1, 2)
    return [p for rows in x.chunk(parts, dim=h_dim) for p in rows.chunk(parts, dim=w_dim)]


def supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) on one view per sample."""
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1) / counts.clamp(min=1)
    valid = (counts > 0).to(mean_log_prob.dtype)  # anchors with no positive pair contribute nothing
    return -(mean_log_prob * valid).sum() / valid.sum().clamp(min=1)


__all__ = ["MLPSR", "Classifier1c2f", "Decoder", "PoolLinear", "as_map", "channels", "patches", "supcon"]


class _Permuted(nn.Module):
    """Run an NCHW module on NHWC maps."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def adapter(have: Sequence[int], have_layout: str, want: Sequence[int], want_layout: str) -> nn.Module | None:
    """A cheap layer mapping a tensor of shape ``have`` to shape ``want`` (same layout), so a copied
    layer can follow features it was not built after; None if no such layer is obvious."""
    have, want = tuple(have[1:]), tuple(want[1:])
    if have == want and have_layout == want_layout:
        return nn.Identity()
    if have_layout != want_layout:
        return None
    if have_layout == "NLC" and have[0] == want[0]:
        return nn.Linear(have[1], want[1])
    if have_layout in ("NCHW", "NHWC"):
        (ci, hi, wi), (co, ho, wo) = ((have, want) if have_layout == "NCHW"
                                      else ((have[2], *have[:2]), (want[2], *want[:2])))
        if hi % ho or wi % wo:
            return None
        conv = nn.Sequential(nn.Conv2d(ci, co, 1, stride=(hi // ho, wi // wo), bias=False), nn.BatchNorm2d(co))
        return conv if have_layout == "NCHW" else _Permuted(conv)
    return None
