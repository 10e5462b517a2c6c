"""Which tensors a pipeline rank holds: those its blocks and aux heads use; the rest go to ``meta``.

Every rank converts the whole model (tracing needs it), then keeps only what its blocks read — the
parameters and buffers of the modules they call (RepL surrogates: also the layers they synthesise
from) and the tensors they fetch with ``get_attr`` — plus its aux heads. Everything else is replaced
by a storage-less ``meta`` tensor of the same shape, so a rank's memory is its share of the model,
and only its own tensors are moved to its device. Names stay: ``state_dict`` keys are unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import nn

from ..base.tensors import node_tensors, state_slots
from ..passes.names import PREFIX
from ..passes.replace import Surrogate
from .split_module import SplitModule


def block_tensors(block: fx.GraphModule) -> list[torch.Tensor]:
    """The parameters and buffers a block (a GraphModule bound to the model) reads."""
    found: list[torch.Tensor] = []
    for node in block.graph.nodes:
        found += node_tensors(block, node)
        if node.op == "call_module" and isinstance(surrogate := block.get_submodule(node.target), Surrogate):
            for name in surrogate.names:
                replaced = block.get_submodule(PREFIX + name)
                found += [*replaced.parameters(), *replaced.buffers()]
    return found


def stage_tensors(sm: SplitModule, blocks: Iterable[int]) -> list[torch.Tensor]:
    """What the rank training ``blocks`` holds: their tensors and those of their aux heads."""
    found: list[torch.Tensor] = []
    for k in blocks:
        found += block_tensors(sm.blocks[k])
        if k < len(sm.heads):
            found += [*sm.heads[k].parameters(), *sm.heads[k].buffers()]
    return found


def unused_tensors(sm: SplitModule) -> list[torch.Tensor]:
    """Parameters and buffers no block or aux head reads (the first stage keeps them, so that every
    tensor of the state dict has a rank)."""
    used = {id(t) for t in stage_tensors(sm, range(sm.num_blocks))}
    return [t for t in (*sm.parameters(), *sm.buffers()) if id(t) not in used]


def place(sm: nn.Module, keep: Iterable[torch.Tensor], device: torch.device | str) -> None:
    """Move the tensors in ``keep`` to ``device`` and turn every other parameter and buffer of ``sm``
    (a SplitModule, or any module) into a ``meta`` tensor (shape and dtype kept). Parameters are new
    objects afterwards: make the optimizer after this."""
    kept = {id(t) for t in keep}
    done: dict[int, torch.Tensor] = {}

    def moved(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            data = t.detach().to(device) if id(t) in kept else torch.empty_like(t, device="meta")
            is_param = isinstance(t, nn.Parameter)
            done[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if is_param else data
        return done[id(t)]

    for slots, name, t in state_slots(sm):
        slots[name] = moved(t)

