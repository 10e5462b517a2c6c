"""The memory a device sees: the whole training step's peak, predicted on fake tensors.

A device runs out of the total, not of saved activations: parameters and buffers, gradients,
optimizer state, the activations the live losses saved, and the transient buffers of forward and
backward (an op's output before the next op frees its input, a gradient before it is accumulated).
Local learning shrinks only the activations. The prediction runs the training step itself with the
runtime's one loop (:func:`~splitfx.runtime.step.run_step`) under the probe's fake mode — no real
compute — inside a :class:`~splitfx.base.live_bytes.LiveBytes` tracker, which follows every
tensor's storage as it is created and freed (the same tracker measures a real step, and the two
agree exactly: tests/test_step_peak.py), plus the scratch oneDNN's convolutions allocate for
themselves on CPU (:mod:`~splitfx.base.workspace`), which only the allocator sees. The optimizer's
state is created first, as a warm step would, by one step on zero gradients (of the parameters a
loss reaches: one the forward never uses gets neither a gradient nor state). E2E is the traced
model, its loss, one backward and one step. The example batch and target count as alive from the
start: a real step holds them. ``splitfx bench`` measures the same quantity with the allocator (the
profiler's memory timeline on CPU, ``max_memory_allocated`` on CUDA).
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

import torch
from torch import nn

from ..base.live_bytes import LiveBytes
from ..base.optimizers import optimizer_spec
from ..base.workspace import onednn_scratch
from ..passes.aux_cost import AuxProbe
from ..passes.cost import FAKE_LIMITS
from ..recipes.base import LossFn, Recipe, SplitParts
from ..runtime.step import run_step
from .simulate import fake_state

Losses = Callable[[], Iterator[torch.Tensor]]


class _Everything(nn.Module):
    """Every module a step touches, so that each tensor is swapped for its fake twin once."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(modules)


def local_peak(aux: AuxProbe, parts: SplitParts, recipe: Recipe, extra: nn.Module, optimizer: str,
               unused: Collection[nn.Parameter] = ()) -> list[int] | None:
    """Peak bytes of one local training step of ``recipe`` with ``optimizer`` while each loss is
    alive (its forward and backward; the optimizer's step counts with the last), or None where fake
    tensors cannot run it. The step's peak is the largest. ``unused``: parameters the forward never
    reads, held but given neither a gradient nor optimizer state, as in a real step."""
    return _step_peak(aux, (parts.model, *parts.heads, extra), optimizer,
                      lambda: recipe.losses(parts, aux.inputs, aux.target), unused)


def e2e_peak(aux: AuxProbe, whole: nn.Module, loss_fn: LossFn, optimizer: str,
             unused: Collection[nn.Parameter] = ()) -> int | None:
    """Peak bytes of one end-to-end training step of ``whole`` (the traced model) under ``loss_fn``."""
    def loss() -> Iterator[torch.Tensor]:  # lazily: run_step frees the last step's gradients before the forward
        yield loss_fn(whole(*aux.inputs), aux.target)

    peaks = _step_peak(aux, (whole,), optimizer, loss, unused)
    return None if peaks is None else max(peaks)


def _step_peak(aux: AuxProbe, modules: tuple[nn.Module, ...], optimizer: str, losses: Losses,
               unused: Collection[nn.Parameter]) -> list[int] | None:
    """Per-loss peaks of one step of ``losses`` over ``modules``, their tensors swapped for fake twins."""
    probe = aux.probe
    root = _Everything(*modules)
    skipped = {id(p) for p in unused}
    # by slot (module, name): the fake twins swapped in are other tensor objects
    untrained = {(id(m), name) for m in root.modules() for name, p in m._parameters.items() if id(p) in skipped}
    try:
        with probe.fake_mode, fake_state(root, probe.state):
            return _tracked(root, optimizer, losses, (*aux.inputs, aux.target), untrained)
    except FAKE_LIMITS:
        return None


def _trained(root: nn.Module, untrained: set[tuple[int, str]]) -> list[nn.Parameter]:
    """``root``'s parameters that require a gradient, each tensor once, less those in the slots
    ``untrained`` (module id, name)."""
    kept: dict[int, nn.Parameter] = {}
    for m in root.modules():
        for name, p in m._parameters.items():
            if p is not None and p.requires_grad and (id(m), name) not in untrained:
                kept.setdefault(id(p), p)
    return list(kept.values())


def _tracked(root: nn.Module, optimizer: str, losses: Losses, batch: tuple[torch.Tensor, ...],
             untrained: set[tuple[int, str]]) -> list[int]:
    """The tracked peak while each loss of one step of ``losses`` over ``root``'s trainable tensors
    is alive, ``batch`` alive throughout; the optimizer's step counts with the last."""
    params = _trained(root, untrained)
    opt = optimizer_spec(optimizer)(params)
    for p in params:  # the optimizer's state, as after a first step
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    peaks: list[int] = []
    with LiveBytes(root, opt, *batch, workspace=onednn_scratch) as tracker:
        run_step(losses(), opt, params[0].device if params else torch.device("cpu"),
                 after_loss=lambda k: peaks.append(tracker.restart_peak()))
    peaks[-1] = max(peaks[-1], tracker.peak)
    for p in params:
        p.grad = None
    return peaks
