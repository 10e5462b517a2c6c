"""Several handed-over tensors → the one tensor an aux head reads.

A cut may hand over several tensors (HRNet's branches, DenseNet's dense features, a residual block
entered half-way). Every one must reach the head, or the layers that produced it get no gradient
from the local loss. :class:`Merge` joins them, in one of two ways a recipe chooses:

* ``VECTOR``: global average pool each (any layout) and concatenate → ``(N, ΣC)``, layout NC;
* ``MAP``: each as an NCHW map, resized to the largest map's H×W (per dimension: adaptive average
  pooling down, nearest upsampling up), concatenated on channels → NCHW. A merge does not see the
  model, so token sequences join as 1×L rows: no grid is guessed from a token count. Token
  sequences of one length (a transformer entered half-way) are concatenated per token instead,
  staying NLC, so heads read them as the model's tokens (grid and prefix tokens included).

A single tensor passes through untouched, so single-tensor cuts cost exactly what they did. A tensor
with layout ``Layout.UNREAD`` (integer, e.g. gemma4_vit's patch positions, which carry no gradient) is
handed over but not read.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base.choices import Choice
from .heads import as_map
from .layout import Layout, pool


class MergeKind(Choice):
    """How a recipe's heads read a cut's several tensors (see module docstring)."""

    VECTOR = "vector"
    MAP = "map"




class Merge(nn.Module):
    """Joins the tensors of one cut for its aux head (see module docstring)."""

    def __init__(self, layouts: Sequence[Layout], mode: MergeKind, size: tuple[int, int] | None = None):
        super().__init__()
        self.layouts, self.mode, self.size = tuple(layouts), MergeKind(mode), size

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        read = [(x, layout) for x, layout in zip(xs, self.layouts, strict=True) if layout != Layout.UNREAD]
        if len(read) == 1:
            return read[0][0]
        if self.mode is MergeKind.VECTOR:
            return torch.cat([pool(x, layout) for x, layout in read], dim=1)
        if self.size is None:  # token sequences of one length: concatenated per token, still NLC
            return torch.cat([x for x, _ in read], dim=2)
        maps = [as_map(x, layout) for x, layout in read]
        return torch.cat([_resize(m, self.size) for m in maps], dim=1)

    def extra_repr(self) -> str:
        return f"{len(self.layouts)} tensors, mode={self.mode.value!r}, size={self.size}"


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """To ``size``: each dimension pooled where it shrinks (every position still reaches the head)
    and repeated (nearest) where it grows."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    down = (min(h, size[0]), min(w, size[1]))
    if down != (h, w):
        x = F.adaptive_avg_pool2d(x, down)
    return x if down == tuple(size) else F.interpolate(x, size=size, mode="nearest")


def merge_for(parts: Sequence[tuple[tuple[int, ...], str]], mode: MergeKind) -> tuple[Merge, tuple[int, ...], str]:
    """The merge of tensors of these (shape, layout) parts, and the shape and layout it produces."""
    mode = MergeKind(mode)
    layouts, size, shape, layout = _merged(tuple((tuple(s), lay) for s, lay in parts), mode)
    return Merge(layouts, mode, size), shape, layout


@functools.lru_cache(maxsize=4096)
def _merged(parts: tuple, mode: MergeKind) -> tuple[tuple[str, ...], tuple[int, int] | None, tuple[int, ...], str]:
    layouts = tuple(layout for _, layout in parts)
    parts = tuple(part for part in parts if part[1] != Layout.UNREAD)
    if len(parts) == 1:
        return layouts, None, parts[0][0], parts[0][1]
    tokens = {layout for _, layout in parts} == {Layout.NLC} and len({shape[1] for shape, _ in parts}) == 1
    if mode is MergeKind.MAP and tokens:
        return layouts, None, (*parts[0][0][:2], sum(shape[2] for shape, _ in parts)), Layout.NLC
    probes = [torch.empty(shape, device="meta") for shape, _ in parts]
    sizes = [as_map(p, layout).shape[-2:] for p, (_, layout) in zip(probes, parts, strict=True)]
    size = tuple(max(sizes, key=lambda s: s[0] * s[1]))
    shape = tuple(Merge([layout for _, layout in parts], mode, size)(*probes).shape)
    return layouts, size, shape, Layout.NC if mode is MergeKind.VECTOR else Layout.NCHW
