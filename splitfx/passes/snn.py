"""Spiking students: a model's ReLUs become leaky integrate-and-fire neurons unrolled over T steps.

:func:`spiking` returns a copy of a model (same class, same module names, so a teacher's nodes
match it) whose ``nn.ReLU``/``nn.ReLU6`` modules are :class:`SpikingReLU`: snntorch's ``Leaky``
neuron run over T time steps inside the module, a leaf of the trace, so a cut never falls inside a
time loop and a block keeps its T steps for its own backward (back-propagation through time inside
the block only). The time axis rides on the batch: the model's input is repeated T times (direct
encoding: the image is the input current at every step) and each tensor between layers is T·B
long, so the planner's costs and the measured saved bytes include the T steps. The output is the
time average (LTL's non-spiking readout), B long again.

Neuron, as LTL's code has it (METHODS.md): ``u[t] = β·u[t−1]·(1 − s[t−1]) + I[t]`` (hard reset),
``s[t] = 1[u[t] > θ]``, β = exp(−1/10), θ = 0.6, rectangular surrogate ``ds/du = 1`` for
``|u − θ| < 0.2``. snntorch (pure Python, no dependencies beyond torch) is chosen over
SpikingJelly, whose wheel pulls in h5py, scipy, loguru and more: its ``Leaky`` with
``reset_mechanism="zero"`` is this neuron exactly, and it takes a custom surrogate.
"""
from __future__ import annotations

import copy
import math

import snntorch
import torch
from snntorch import surrogate
from timm.layers import register_notrace_module
from torch import nn

from ..base.errors import ArgumentError

THRESHOLD, DECAY, WINDOW = 0.6, math.exp(-1 / 10), 0.2
SPIKING = (nn.ReLU, nn.ReLU6)


def over_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``x`` fed at every one of ``steps`` time steps, folded into the batch time-major (T·B)."""
    return torch.cat([x] * steps)


def time_average(x: torch.Tensor, steps: int) -> torch.Tensor:
    """The mean over the ``steps`` time steps a T·B batch folds (B long again)."""
    return x.unflatten(0, (steps, -1)).mean(0)


def _rectangular(shifted: torch.Tensor, grad: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """LTL's surrogate: the spike's gradient is 1 within ``WINDOW`` of the threshold, 0 elsewhere."""
    return grad * (shifted.abs() < WINDOW).to(grad.dtype)


class _Leaky(snntorch.Leaky):
    """snntorch's ``Leaky``, its reset signal made without autograd: snntorch detaches it anyway, but
    making it under autograd saves two tensors for a backward that never comes, every step."""

    def mem_reset(self, mem: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().mem_reset(mem)


@register_notrace_module  # one opaque node: its T steps stay in one block
class SpikingReLU(nn.Module):
    """snntorch's LIF neuron over ``steps`` time steps of a T·B batch (time-major); returns the spikes."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps
        self.neuron = _Leaky(beta=DECAY, threshold=THRESHOLD, reset_mechanism="zero",
                             spike_grad=surrogate.custom_surrogate(_rectangular))
        # snntorch lists every neuron for its init_hidden helpers; this one never uses them, and the
        # list would keep each student's neurons alive for the life of the process.
        snntorch.SpikingNeuron.instances.remove(self.neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        currents = x.unflatten(0, (self.steps, -1))
        mem = torch.zeros_like(currents[0])
        spikes = []
        for current in currents:
            spike, mem = self.neuron(current, mem)
            spikes.append(spike)
        # The neuron keeps its last state as attributes: drop it, or it would hold this step's graph.
        self.neuron.mem, self.neuron.reset = x.new_zeros(0), None
        return torch.stack(spikes).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, threshold={THRESHOLD}, decay={DECAY:.4f}"


def spiking(model: nn.Module, steps: int = 16) -> nn.Module:
    """A spiking copy of ``model`` (see the module docstring): its ReLUs are LIF neurons over
    ``steps`` time steps, its input is repeated ``steps`` times and its output is the time average.
    The model's own forward must take one tensor whose first dimension is the batch."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ArgumentError(f"spiking: steps must be a positive int (LTL uses 16), got {steps!r}")
    student = copy.deepcopy(model)
    found = [name for name, m in student.named_modules() if isinstance(m, SPIKING)]
    if not found:
        raise ArgumentError(f"spiking: {type(model).__name__} has no nn.ReLU or nn.ReLU6 module to make spiking "
                            "(an activation called as a function, F.relu, is not replaced); use a model whose "
                            "activations are modules")
    for name in found:
        parent, _, leaf = name.rpartition(".")
        setattr(student.get_submodule(parent), leaf, SpikingReLU(steps))
    base = type(student)
    student.__class__ = type(f"Spiking{base.__name__}", (_TimeLoop, base), {})
    student.spiking_steps = steps
    return student


class _TimeLoop(nn.Module):
    """Mixed in before the model's class: the input repeated over time, the output averaged over it."""

    spiking_steps: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.spiking_steps
        return time_average(super().forward(over_time(x, steps)), steps)
