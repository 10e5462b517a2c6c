"""Aux-head building blocks shared by the recipes, for any boundary layout.

Convolutional heads read the boundary through a :class:`~.layout.MapSpec` (token grids recognised
from the model, sequences kept as 1×L rows); pooling heads read every position as it is.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layout import FIRST, LAST, Layout, MapSpec, as_row, channels, channels_last, pool
from .task import carry_criterion, scoring


def as_map(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """An NCHW map from any layout without knowing the model: tokens stay a 1×L row (no grid is
    guessed; heads that know the model use :func:`~.layout.map_spec`)."""
    if layout == Layout.NLC:
        return as_row(x)
    return MapSpec(layout)(x)


class PoolLinear(nn.Module):
    """Global average pool over all positions, then one Linear."""

    def __init__(self, layout: Layout, in_channels: int, num_classes: int):
        super().__init__()
        self.layout = layout
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(pool(x, self.layout))


def pool_linear(shape: Sequence[int], layout: Layout, num_classes: int) -> PoolLinear:
    return PoolLinear(layout, channels(shape, layout), num_classes)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class MLPSR(nn.Module):
    """DGL's aux net: pool to ⌈H/4⌉, n × [1×1 conv, BN, ReLU], pool 2×2, m × [Linear, BN1d, ReLU], Linear."""

    def __init__(self, spec: MapSpec, shape: Sequence[int], num_classes: int, n: int = 3, m: int = 3):
        super().__init__()
        self.spec = spec
        c, h, w = spec.map_shape(shape)
        self.pool = nn.AdaptiveAvgPool2d((max(1, -(-h // 4)), max(1, -(-w // 4))))
        self.convs = nn.Sequential(*[conv_bn_relu(c, c, kernel=1) for _ in range(n)])
        self.pool2 = nn.AdaptiveAvgPool2d(2)
        self.mlp = nn.Sequential(*[
            nn.Sequential(nn.Linear(4 * c, 4 * c, bias=False), nn.BatchNorm1d(4 * c), nn.ReLU()) for _ in range(m)
        ])
        self.fc = nn.Linear(4 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.pool(self.spec(x)))
        return self.fc(self.mlp(torch.flatten(self.pool2(x), 1)))


IMAGENET_SIDE = 112  # inputs at least this large get the papers' ImageNet heads (:class:`Classifier`)


def imagenet_sized(image_shape: Sequence[int]) -> bool:
    """Whether an input of ``image_shape`` (``[B, C, H, W]``) is ImageNet-sized, not CIFAR-sized."""
    return len(image_shape) == 4 and min(image_shape[-2:]) >= IMAGENET_SIDE


class Classifier(nn.Module):
    """InfoPro's "1c2f" (``convs=1``) and HPFF's "2c2f" (``convs=2``), their CIFAR heads: conv3×3
    (stride 2 and 2× width on narrow maps, C < 64) → BN → ReLU [→ conv3×3 → BN → ReLU] → GAP →
    Linear(→hidden) → ReLU → Linear(→out).

    With ``imagenet``, the head their ImageNet code uses instead (InfoPro, HPFF and MAN alike, for
    either path) wherever it keeps fewer bytes (:func:`imagenet_lighter`): conv1×1 to r = max(128,
    C/4) → conv3×3 stride 2 to max(256, r) → conv3×3 stride 2 to twice that → conv1×1 to min(2048, 4×
    that), each with BN and ReLU → GAP → Linear(→out). Their ImageNet cuts all have 512 channels or
    more, where it is the lighter one; it is lighter than 2c2f from 177 channels (resnet50's
    256-channel stage-1 maps: 704 against 1,024 channels of saves per position) and than 1c2f from
    353 (there 512)."""

    def __init__(self, spec: MapSpec, shape: Sequence[int], out_features: int, convs: int = 1, hidden: int = 128,
                 imagenet: bool = False):
        super().__init__()
        self.spec = spec
        c, h, w = spec.map_shape(shape)
        if imagenet and imagenet_lighter(c, convs):
            r, mid = _imagenet_widths(c)
            self.conv = nn.Sequential(conv_bn_relu(c, r, 1), conv_bn_relu(r, mid, 3, 2),
                                      conv_bn_relu(mid, 2 * mid, 3, 2), conv_bn_relu(2 * mid, min(2048, 8 * mid), 1))
            self.fc = nn.Linear(min(2048, 8 * mid), out_features)
            return
        width, stride = _cifar_width(c, h, w)
        self.conv = nn.Sequential(conv_bn_relu(c, width, 3, stride),
                                  *[conv_bn_relu(width, width) for _ in range(convs - 1)])
        self.fc = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.spec(x)).mean((2, 3)))


def _imagenet_widths(c: int) -> tuple[int, int]:
    r = max(128, c // 4)
    return r, max(256, r)


def _cifar_width(c: int, h: int, w: int) -> tuple[int, int]:
    narrow = c < 64
    return (2 * c if narrow else c), (2 if narrow and min(h, w) >= 4 else 1)


def imagenet_lighter(c: int, convs: int) -> bool:
    """Whether the ImageNet head saves fewer bytes than the CIFAR one on a C-channel map, counted in
    channels per input position: each conv → BN → ReLU keeps two tensors of its output (BN's input,
    ReLU's output), each stride-2 conv a quarter of the positions after it."""
    r, mid = _imagenet_widths(c)
    imagenet = 2 * r + 2 * mid / 4 + 2 * (2 * mid) / 16 + 2 * min(2048, 8 * mid) / 16
    width, stride = _cifar_width(c, 1, 1)
    return imagenet < 2 * convs * width / stride**2


class Scored(nn.Module):
    """A classifier with ``loss(features, target, image)``: its prediction scored with the task's loss
    (cross-entropy on class logits by default), found on the classifier or on the task's head inside
    it (a cascade's leap network ends in one)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = carry_criterion(classifier)
        self.weights = {"task": 1.0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def loss(self, features: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return scoring(self.classifier)(self(features), target)


class NoHead(nn.Module):
    """Stands at a cut whose block has no loss of its own: no parameters, nothing computed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this cut has no aux head: its block learns only through the next block's cascade")


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


class _Permuted(nn.Module):
    """Run a channels-first module on channels-last tensors."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.movedim(-1, 1)).movedim(1, -1)


_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


class Resample(nn.Module):
    """Any boundary → a tensor of shape ``want`` in ``want_layout``, for a copied layer no cheap
    :func:`adapter` fits (a cut inside a transformer block handing over attention tensors): the
    boundary as a map (``spec``), average-pooled to the target's positions (a token sequence's as a
    1×L row, a volume's depth repeated), a linear map to its channels."""

    def __init__(self, spec: MapSpec, have: Sequence[int], want: Sequence[int], want_layout: Layout):
        super().__init__()
        self.spec, self.layout = spec, want_layout
        last = channels_last(want_layout)
        self.positions = tuple(want[1:-1] if last else want[2:])
        self.fc = nn.Linear(spec.map_shape(have)[0], channels(want, want_layout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spec(x)
        if not self.positions:
            return self.fc(x.mean((2, 3)))
        if len(self.positions) == 1:
            x = x.flatten(2)
        elif len(self.positions) == 3:
            x = x.unsqueeze(2)
        x = self.fc(_POOLS[len(self.positions)](x, self.positions).movedim(1, -1))
        return x if channels_last(self.layout) else x.movedim(-1, 1)


_CONVS = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)}
_CONVOLVED = {*FIRST.values(), *LAST.values()} - {Layout.NLC}  # tokens are no grid a convolution could read


def adapter(have: Sequence[int], have_layout: Layout, want: Sequence[int], want_layout: Layout) -> nn.Module | None:
    """A cheap layer mapping a tensor of shape ``have`` to shape ``want`` (same layout), so a copied
    layer can follow features it was not built after: a Linear on tokens of the same count, a strided
    1×1 convolution on maps, signals and volumes whose positions divide; None if no such layer is obvious."""
    have, want = tuple(have[1:]), tuple(want[1:])
    if have == want and have_layout == want_layout:
        return nn.Identity()
    if have_layout != want_layout:
        return None
    if have_layout == Layout.NLC and have[0] == want[0]:
        return nn.Linear(have[1], want[1])
    if have_layout in _CONVOLVED:
        last = channels_last(have_layout)
        (ci, *pi), (co, *po) = (((have[-1], *have[:-1]), (want[-1], *want[:-1])) if last else (have, want))
        if any(i % o for i, o in zip(pi, po, strict=True)):
            return None
        conv, norm = _CONVS[len(pi)]
        layer = nn.Sequential(conv(ci, co, 1, stride=tuple(i // o for i, o in zip(pi, po, strict=True)), bias=False),
                              norm(co))
        return _Permuted(layer) if last else layer
    return None


__all__ = ["MLPSR", "Classifier", "NoHead", "PoolLinear", "Resample", "Scored", "adapter", "as_map", "conv_bn_relu",
           "pool_linear", "supcon"]
