"""Shapes at trace time: control flow on the inputs' shapes, and factories given traced sizes.

``if x.ndim != 4`` or ``if H % cell != 0`` in a forward is control flow on a traced value, which
torch.fx refuses (gemma4_vit's encoder checks its input and token count that way). :func:`branch`
runs the graph traced so far on fake copies of the example inputs (shapes known, data not), and
when the condition has a value there the tracer follows that branch, as torch.export specialises
shapes. It refuses a condition whose answer changes with the batch size
(evaluated again with the batch grown by one), and the graph keeps a call to :func:`expect_branch`,
which raises on an input whose shapes would take the other branch.

``torch.ones(B, N)`` with traced ``B, N`` fails in fx's argument parsing (``torch.ones((B, N))``
traces): :func:`sizes_as_tuples` packs the sizes of torch's factories while a trace runs.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.fx._symbolic_trace import _maybe_revert_all_patches
from torch.fx.proxy import TraceError

from ..base.errors import SplitFXError


def _ancestors(node: fx.Node) -> list[fx.Node]:
    """``node`` and everything it is computed from, in graph order."""
    seen, stack = {node}, [node]
    while stack:
        for i in stack.pop().all_input_nodes:
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return [n for n in node.graph.nodes if n in seen]


class _Prefix(nn.Module):
    """Runs the graph traced so far up to one node, reading ``root``'s modules and state."""

    def __init__(self, root: nn.Module, node: fx.Node):
        super().__init__()
        self.root, self.node = root, node

    def forward(self, *inputs: torch.Tensor) -> Any:
        interpreter = fx.Interpreter(self.root, graph=self.node.graph)
        placeholders = iter(inputs)
        for n in _ancestors(self.node):
            interpreter.env[n] = next(placeholders) if n.op == "placeholder" else interpreter.run_node(n)
        return interpreter.env[self.node]


def _evaluate(root: nn.Module, node: fx.Node, inputs: Sequence[torch.Tensor]) -> bool:
    """The truth of ``node`` with the graph so far run on fake copies of ``inputs`` and of ``root``'s
    parameters and buffers (so nothing real changes, not even BatchNorm's batch count): shapes are
    known there, data is not, so a condition on data raises."""
    # fx's patches (every module call goes to the tracer) are lifted while the graph runs.
    with _maybe_revert_all_patches(), FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
        state = {name: mode.from_tensor(t) for name, t in (*root.named_parameters(), *root.named_buffers())}
        value = functional_call(_Prefix(root, node), {f"root.{k}": v for k, v in state.items()},
                                tuple(mode.from_tensor(x) for x in inputs))
        return bool(value)


def branch(root: nn.Module, node: fx.Node, example_inputs: Sequence[torch.Tensor]) -> bool:
    """The truth of ``node`` at the example inputs' shapes; fx's own ``TraceError`` (which the trace
    pass explains, or answers with an auto-leaf) if it depends on their data or changes with the
    batch size."""
    batch = example_inputs[0].shape[0] if example_inputs and example_inputs[0].dim() else None
    grown = [x.new_empty((batch + 1, *x.shape[1:])) if x.dim() and x.shape[0] == batch else x for x in example_inputs]
    try:
        taken = _evaluate(root, node, example_inputs)
        other = _evaluate(root, node, grown) if batch is not None else taken
    except Exception as err:
        raise TraceError("symbolically traced variables cannot be used as inputs to control flow (the condition "
                         f"depends on more than the inputs' shapes: {type(err).__name__}: {err})") from None
    if other != taken:
        raise TraceError("symbolically traced variables cannot be used as inputs to control flow "
                         f"(the condition {node.format_node()} changes with the batch size)")
    return taken


def expect_branch(condition: Any, taken: bool, where: str) -> None:
    """An input whose shapes would take the other branch than the traced one is refused."""
    if bool(condition) != taken:
        raise SplitFXError(f"the model was traced where {where} is {taken}, but this input's shapes make it "
                           f"{not taken}; convert the model again for inputs of this shape.")


FACTORIES = ("ones", "zeros", "empty", "rand", "randn")


@contextlib.contextmanager
def sizes_as_tuples() -> Iterator[None]:
    """While tracing, ``torch.ones(a, b, ...)`` (and ``zeros``, ``empty``, ``rand``, ``randn``) with a
    traced size calls ``torch.ones((a, b), ...)``, which fx records as the same call."""
    originals = {name: getattr(torch, name) for name in FACTORIES}

    def packing(factory: Callable) -> Callable:
        @functools.wraps(factory)
        def call(*sizes, **kwargs):
            if len(sizes) > 1 and any(isinstance(s, fx.Proxy) for s in sizes):
                return factory(tuple(sizes), **kwargs)
            return factory(*sizes, **kwargs)
        return call

    try:
        for name, factory in originals.items():
            setattr(torch, name, packing(factory))
        yield
    finally:
        for name, factory in originals.items():
            setattr(torch, name, factory)
