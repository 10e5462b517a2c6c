"""E2E activation memory measured, not predicted: one training step of an unsplit copy of the model,
under the same :class:`SavedTensorMeter` that measures local training, so the two numbers count the
same thing (live saved-for-backward bytes; parameters and buffers excluded)."""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..base.meter import SavedTensorMeter, state_keys
from ..runtime.step import run_step


def e2e_saved_bytes(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    autocast_dtype: torch.dtype | None = None) -> int:
    """Peak saved activations of forward + loss + backward of a copy of ``model`` on ``inputs``'s
    device. ``model`` (weights, buffers, gradients, modes) and the global RNG are left as they were."""
    device = inputs.device
    twin = copy.deepcopy(model).to(device)
    cuda = [device] if device.type == "cuda" else []

    def loss():
        yield loss_fn(twin(inputs), target.to(device))

    with torch.random.fork_rng(devices=cuda), SavedTensorMeter(state_keys([twin])) as meter:
        run_step(loss(), None, device, autocast_dtype=autocast_dtype)
    return meter.peak
