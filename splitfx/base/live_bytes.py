"""Bytes of every tensor alive, over time: what a step holds in memory, by tensor storage.

``with LiveBytes(model, optimizer) as t: step()`` counts the storages alive when it starts (the
modules' parameters, buffers and gradients, the optimizer's state, any other tensors given) and
every storage an op creates inside, until it is freed; ``t.peak`` is the largest total. A storage
is counted once however many tensors view it. It works on real and on fake tensors alike, so one
instrument both predicts a step (fake) and measures it (real). Unlike torch's ``MemTracker`` it
does not follow modules, so a module may run several times in one step (cascade recipes do).
Allocations outside torch's tensors (a backend's scratch buffers) are not seen: the allocator's own
peak (``programs/measure.allocator_peak``) includes them. ``workspace=`` adds a model of them
(:func:`~splitfx.base.workspace.onednn_scratch`): each op's modelled bytes count on top of what is
alive once it has returned, for the peak only.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages; ``peak`` and ``live`` in bytes."""

    def __init__(self, *owners: nn.Module | torch.optim.Optimizer | torch.Tensor,
                 workspace: Callable[[Any, tuple, Any], int] | None = None):
        super().__init__()
        self.live = self.peak = 0
        self._workspace = workspace
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for owner in owners:
            for t in _tensors(owner):
                self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        weakref.finalize(storage, self._free, nbytes)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def restart_peak(self) -> int:
        """The peak so far; the next one is counted from the bytes alive now."""
        peak, self.peak = self.peak, self.live
        return peak

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        if self._workspace is not None:
            self.peak = max(self.peak, self.live + self._workspace(func, args, out))
        return out



def _tensors(owner: nn.Module | torch.optim.Optimizer | torch.Tensor) -> list[torch.Tensor]:
    """The tensors ``owner`` holds: a module's parameters, their gradients and its buffers; an
    optimizer's state."""
    if isinstance(owner, torch.Tensor):
        return [owner]
    if isinstance(owner, torch.optim.Optimizer):
        return [t for state in owner.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    params = list(owner.parameters())
    return [*params, *(p.grad for p in params if p.grad is not None), *owner.buffers()]
