"""Feature layouts at a cut: NCHW maps, NHWC maps, NLC tokens, NC vectors.

A 4-D boundary tensor is ambiguous; its spatial dims are the pair whose ratio matches the input
image and that divides it (swin keeps NHWC, most CNNs NCHW). Pooling and channel count follow."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _spatial_fit(h: int, w: int, input_hw: Sequence[int] | None) -> float:
    if not input_hw:
        return 0.0
    ih, iw = input_hw
    divides = ih % h == 0 and iw % w == 0
    ratio = abs(ih / iw - h / w)
    return (1.0 if divides else 0.0) - ratio


def infer_layout(shape: Sequence[int], input_hw: Sequence[int] | None = None) -> str | None:
    """Best guess of the layout of a boundary tensor of ``shape`` (batch first); None if no layout
    fits (e.g. swin's 6-D window partitions), in which case no aux head can be attached there."""
    if len(shape) == 2:
        return "NC"
    if len(shape) == 3:
        return "NLC"
    if len(shape) == 4:
        nchw = _spatial_fit(shape[2], shape[3], input_hw)
        nhwc = _spatial_fit(shape[1], shape[2], input_hw)
        return "NHWC" if nhwc > nchw else "NCHW"
    return None


def channels(shape: Sequence[int], layout: str) -> int:
    return shape[1] if layout == "NCHW" else shape[-1]


def pool(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Global average over all positions → (N, C)."""
    if layout == "NCHW":
        return x.mean((2, 3))
    if layout == "NHWC":
        return x.mean((1, 2))
    if layout == "NLC":
        return x.mean(1)
    return x

