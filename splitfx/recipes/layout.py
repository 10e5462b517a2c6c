"""Feature layouts at a cut: vectors (NC), sequences (NLC tokens, NCL signals), maps (NCHW, NHWC),
volumes (NCDHW, NDHWC); and how each becomes an NCHW map.

Where the channels are is read from the graph when it says (:mod:`splitfx.passes.channels`: the
convolutions, norms, linears around the tensor). Otherwise a 3-D tensor is NLC tokens, a 4-D
tensor's spatial dims are the pair whose ratio matches the input image and that divides it (swin
keeps NHWC, most CNNs NCHW), and a 5-D one has no layout (attention's ``B, N, 3, heads, d``
is no volume). Pooling and channel count follow.

A token sequence (NLC) is a grid only when the model says so: its prefix tokens (class,
distillation, register tokens) are the model's own ``num_prefix_tokens`` (timm's attribute), and the
remaining tokens must be exactly ``h·w`` with ``h:w`` the input's aspect ratio. Anything else is a
sequence and is never reshaped into a grid (:class:`MapSpec` makes it a 1×L row, as an NCL signal).
A volume's map is its average over depth (time in a video): the frames' H×W grid, every channel kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..base.choices import Choice


class Layout(Choice):
    """What each dim of a cut's tensor is (batch first), as timm's ``Format``; ``UNREAD`` marks a
    handed-over tensor no head reads (not floating: it has no gradient)."""

    NC = "NC"
    NLC = "NLC"
    NCL = "NCL"
    NCHW = "NCHW"
    NHWC = "NHWC"
    NCDHW = "NCDHW"
    NDHWC = "NDHWC"
    UNREAD = "-"


FIRST = {3: Layout.NCL, 4: Layout.NCHW, 5: Layout.NCDHW}  # channels-first layout of each rank
LAST = {3: Layout.NLC, 4: Layout.NHWC, 5: Layout.NDHWC}  # channels-last


def channels_last(layout: Layout) -> bool:
    """Whether ``layout`` keeps channels in the last dim (NC's one dim counts as last)."""
    return layout not in FIRST.values()


def _spatial_fit(h: int, w: int, input_hw: Sequence[int] | None) -> float:
    if h <= 0 or w <= 0:
        return float("-inf")  # an empty dim (e.g. a model's zero register tokens) is never spatial
    if not input_hw:
        return 0.0
    ih, iw = input_hw
    divides = ih % h == 0 and iw % w == 0
    ratio = abs(ih / iw - h / w)
    return (1.0 if divides else 0.0) - ratio


def infer_layout(shape: Sequence[int], input_hw: Sequence[int] | None = None, last: bool | None = None
                 ) -> Layout | None:
    """The layout of a boundary tensor of ``shape`` (batch first): channels last or first as ``last``
    says (the graph's word, :func:`splitfx.passes.channels.channels_last_in`), else guessed from the
    shape (module docstring); None if no layout fits (e.g. swin's 6-D window partitions), in which
    case no aux head can be attached there."""
    rank = len(shape)
    if rank == 2:
        return Layout.NC
    if rank not in FIRST:
        return None
    if last is not None:
        return LAST[rank] if last else FIRST[rank]
    if rank == 4:
        nchw = _spatial_fit(shape[2], shape[3], input_hw)
        nhwc = _spatial_fit(shape[1], shape[2], input_hw)
        return Layout.NHWC if nhwc > nchw else Layout.NCHW
    return Layout.NLC if rank == 3 else None


def follow(shape: Sequence[int], input_hw: Sequence[int] | None, before: Sequence[int], layout: Layout
           ) -> Layout | None:
    """The layout of a tensor of ``shape`` that one of the model's layers (which recipes copy) makes
    from a tensor of shape ``before`` in ``layout``. A 3-D or 5-D tensor keeps its channels where they
    were when the layer keeps the rank; otherwise 5-D is NCDHW (torch's 3-D convolutions: such layers
    hand over whole tensors the graph placed) and anything else as :func:`infer_layout` reads it."""
    rank = len(shape)
    if rank in (3, 5) and len(before) == rank and layout in (FIRST[rank], LAST[rank]):
        return infer_layout(shape, input_hw, channels_last(layout))
    return Layout.NCDHW if rank == 5 else infer_layout(shape, input_hw)


def channels(shape: Sequence[int], layout: Layout) -> int:
    return shape[-1] if channels_last(layout) else shape[1]


def pool(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Global average over all positions → (N, C)."""
    if layout == Layout.NC:
        return x
    return x.mean(tuple(range(1, x.dim() - 1)) if channels_last(layout) else tuple(range(2, x.dim())))


def prefix_tokens(model: nn.Module | None) -> int:
    """The model's own count of tokens before the patch grid (timm's ``num_prefix_tokens``), else 0."""
    count = getattr(model, "num_prefix_tokens", 0)
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 0


def token_grid(length: int, prefix: int, input_hw: Sequence[int] | None) -> tuple[int, int] | None:
    """(h, w) when ``length − prefix`` tokens are exactly an h×w grid of the input's aspect ratio."""
    tokens = length - prefix
    if tokens <= 0 or not input_hw:
        return None
    ih, iw = input_hw
    for h in range(1, tokens + 1):
        if tokens % h == 0 and h * iw == (tokens // h) * ih:
            return h, tokens // h
    return None


def as_row(x: torch.Tensor) -> torch.Tensor:
    """A token sequence (N, L, C) as a 1×L map (N, C, 1, L): positions kept in order, no grid."""
    return x.transpose(1, 2).unsqueeze(2)


@dataclass(frozen=True)
class MapSpec:
    """How a boundary tensor becomes an NCHW map for a convolutional head.

    ``prefix`` tokens are dropped and the rest reshaped to ``grid`` for token grids; ``grid`` None
    on an NLC tensor means a plain sequence (1×L row, as an NCL signal). A volume is averaged over
    depth. ``spatial`` says whether the map has the image's geometry (NCHW/NHWC maps and token
    grids), which a reconstruction decoder needs."""

    layout: Layout
    prefix: int = 0
    grid: tuple[int, int] | None = None

    @property
    def spatial(self) -> bool:
        return self.layout in (Layout.NCHW, Layout.NHWC) or self.grid is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == Layout.NCHW:
            return x
        if self.layout == Layout.NHWC:
            return x.permute(0, 3, 1, 2)
        if self.layout == Layout.NC:
            return x[:, :, None, None]
        if self.layout == Layout.NCL:
            return x.unsqueeze(2)
        if self.layout == Layout.NCDHW:
            return x.mean(2)
        if self.layout == Layout.NDHWC:
            return x.mean(1).permute(0, 3, 1, 2)
        if self.grid is None:
            return as_row(x)
        n, _, c = x.shape
        return x[:, self.prefix:].transpose(1, 2).reshape(n, c, *self.grid)

    def map_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) of the map of a tensor of ``shape``."""
        _, c, h, w = self(torch.empty(tuple(shape), device="meta")).shape
        return c, h, w


def map_spec(shape: Sequence[int], layout: Layout, input_shape: Sequence[int], model: nn.Module | None) -> MapSpec:
    """The :class:`MapSpec` of a tensor of ``shape``/``layout`` in ``model`` fed inputs of ``input_shape``."""
    if layout != Layout.NLC:
        return MapSpec(layout)
    hw = tuple(input_shape[-2:]) if len(input_shape) == 4 else None
    for prefix in dict.fromkeys((prefix_tokens(model), 0)):
        grid = token_grid(shape[1], prefix, hw)
        if grid is not None:
            return MapSpec(layout, prefix, grid)
    return MapSpec(layout)
