"""Memory measured, not predicted. E2E activations: one training step of an unsplit copy of the
model, under the same :class:`SavedTensorMeter` that measures local training, so the two numbers
count the same thing (live saved-for-backward bytes; parameters and buffers excluded). A training
step's whole peak: the allocator's (:func:`allocator_peak`)."""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

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


def allocator_peak(step: Callable[[], None], device: torch.device) -> int:
    """The allocator's peak bytes during one call of ``step``, everything alive counted: weights,
    gradients, optimizer state, the batch, activations and transient buffers. On CUDA
    ``max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU the PyTorch profiler's memory
    timeline (every tensor's allocation and free, by category; tensors alive before the step are
    found from the ops that use them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Deprecated for CUDA in favour of the allocator's snapshots, which CPU does not have.
        warnings.simplefilter("ignore", FutureWarning)
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    return int(max((sum(row) for row in sizes), default=0))
