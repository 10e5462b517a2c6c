"""Tensor helpers every layer uses: example inputs as a tuple, class scores, the bytes of a model's weights."""
from __future__ import annotations

from collections.abc import Sequence

import torch

Inputs = torch.Tensor | Sequence[torch.Tensor]


def as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    """``x`` → ``(x,)``; a sequence of tensors → a tuple of them."""
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def class_scores(output: object) -> bool:
    """Whether ``output`` is one (batch, classes) tensor, what cross-entropy takes; an encoder's
    tokens or a dict of outputs are not."""
    return isinstance(output, torch.Tensor) and output.dim() == 2


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers: what one copy of its weights takes."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
