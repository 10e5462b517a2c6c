"""Random draws in a split model: which calls draw, and one draw per training step.

A train-only call (:func:`train_only`, made by the trace pass where the train-mode graph adds an
augmentation such as sapiens2's rotary coordinates) is usually a random draw; when it is computed
from shapes and constants alone it is free, so each block that reads it computes it again. Under
:func:`one_draw_per_step`, which a SplitModule's step and a pipeline stage enter, every computation
after the first replays the random-number state of the first, so all blocks see the one draw the
model would make.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator

import torch
import torch.fx as fx

# Calls whose value changes from run to run: never free (rematerialised), so every block sees one draw.
RANDOM_FUNCTIONS = frozenset({
    torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
    torch.randperm, torch.bernoulli, torch.multinomial, torch.normal, torch.poisson,
    torch.nn.functional.dropout, torch.nn.functional.dropout1d, torch.nn.functional.dropout2d,
    torch.nn.functional.dropout3d, torch.nn.functional.alpha_dropout, torch.nn.functional.feature_alpha_dropout,
    torch.nn.functional.gumbel_softmax, torch.nn.functional.rrelu,
})
RANDOM_METHODS = frozenset({"bernoulli", "bernoulli_", "uniform_", "normal_", "random_", "exponential_",
                            "geometric_", "cauchy_", "log_normal_"})


class _Draws(threading.local):
    states: dict[str, tuple] | None = None  # call → random-number state before its first run this step


_DRAWS = _Draws()


@contextlib.contextmanager
def one_draw_per_step() -> Iterator[None]:
    """Within, each train-only call draws once: a later computation of the same call (a block
    rematerialising it) replays the random-number state of the first and leaves the stream as it was."""
    saved, _DRAWS.states = _DRAWS.states, {}
    try:
        yield
    finally:
        _DRAWS.states = saved


def _replayed(key: str, fn: Callable, value, *args, **kwargs):
    states = _DRAWS.states
    if states is None:
        return fn(value, *args, **kwargs)
    devices = [value.device.index or 0] if isinstance(value, torch.Tensor) and value.device.type == "cuda" else []
    if key not in states:
        states[key] = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
        return fn(value, *args, **kwargs)
    cpu, cuda = states[key]
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        for device, state in zip(devices, cuda, strict=True):
            torch.cuda.set_rng_state(state, device)
        return fn(value, *args, **kwargs)


@functools.cache
def train_only(fn: Callable) -> Callable:
    """``fn`` gated on a training flag: ``train_only(fn)(training, key, value, *args)`` is
    ``fn(value, *args)`` in training and ``value`` itself otherwise; ``key`` names the call for
    :func:`one_draw_per_step`. One wrapper per ``fn``, named for it in generated code."""

    def gated(training: bool, key: str, value, *args, **kwargs):
        return _replayed(key, fn, value, *args, **kwargs) if training else value

    gated.__name__ = gated.__qualname__ = f"train_only_{getattr(fn, '__name__', 'call')}"
    gated.__module__ = __name__
    gated.train_only_of = fn
    return gated


def draws_random(node: fx.Node) -> bool:
    """Whether ``node``'s value may differ between two runs on the same inputs, other than through a
    train-only call (which :func:`one_draw_per_step` replays)."""
    if node.op == "call_method":
        return node.target in RANDOM_METHODS
    return node.op == "call_function" and node.target in RANDOM_FUNCTIONS
