"""Trace pass: ``nn.Module`` → ``fx.GraphModule`` bound to the user's model.

* Leaves: timm's no-trace registry, DropPath/Dropout, and whatever the user names in ``leaf_modules``
  (module FQNs or classes).
* Optional ``forward`` arguments beyond the example inputs become ``concrete_args`` at their
  defaults, so e.g. ViT's ``attn_mask=None`` does not stay live through the whole graph.
* The graph is traced in both modes and made exact in both (:mod:`.modes`): a ``self.training``
  constant reads the flag at run time, a train-only call is gated on it, and a module whose traces
  differ otherwise is kept opaque.
* A submodule fx cannot trace (data-dependent Python) becomes a leaf too, and the trace is repeated
  (``auto_leaf``, up to 16 modules): the model still splits at the boundaries around it. At the cap,
  the error names the modules made leaves and the ``leaf_modules=`` that keeps them all whole.
* A failure names the source line (the innermost frame outside torch and splitfx) and what helps:
  ``leaf_modules=`` inside a submodule, a subclass or wrapper for the model's own forward
  (:mod:`.trace_advice`).
* Each node gets ``node.meta["splitfx"] = {"scope": FQN, "cls": class name}``.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import traceback
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..base.errors import TraceError, first_line
from . import shape_branch
from .bind import bind
from .modes import apply, container_stack, reconcile
from .trace_advice import cap_reached, mode_branch, top_level

LeafSpec = str | type

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep  # the separator keeps torchvision's frames the model's
_OWN_DIR = os.path.dirname(os.path.dirname(__file__)) + os.sep
_MAX_MODE_FIXES = 8
_MAX_AUTO_LEAVES = 16


def _timm_notrace() -> tuple[set[type], set]:
    try:
        from timm.layers import DropPath, get_notrace_functions, get_notrace_modules
    except ImportError:
        return set(), set()
    functions = {f for f in get_notrace_functions() if callable(f)}
    return set(get_notrace_modules()) | {DropPath}, functions


class SplitTracer(fx.Tracer):
    """fx tracer with splitfx's leaf rules; remembers the innermost module a failure happened in."""

    def __init__(self, leaf_classes: Iterable[type], leaf_names: Iterable[str], autowrap_functions: Iterable,
                 example_inputs: Sequence[torch.Tensor] = ()):
        super().__init__(autowrap_functions=tuple(autowrap_functions), param_shapes_constant=True)
        self.leaf_classes = tuple(leaf_classes)
        self.leaf_names = frozenset(leaf_names)
        self.example_inputs = tuple(example_inputs)
        self.failed_in: tuple[str, type] | None = None

    def to_bool(self, obj: fx.Proxy) -> bool:
        """Control flow on the inputs' shapes takes the example's branch, checked at run time
        (:mod:`.shape_branch`); on anything else fx's error stands."""
        taken = shape_branch.branch(self.root, obj.node, self.example_inputs)
        frame = _model_frame(traceback.extract_stack())
        where = f"{frame.line} ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else "a branch"
        self.create_proxy("call_function", shape_branch.expect_branch, (obj, taken, where), {})
        return taken

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_classes):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = (self.path_of_module(m), type(m))
            raise


@contextlib.contextmanager
def training_mode(model: nn.Module, mode: bool) -> Iterator[None]:
    """Temporarily put every submodule in ``mode``; restores each module's own flag afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(mode)
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _concrete_args(model: nn.Module, num_inputs: int) -> dict[str, Any]:
    params = [
        p for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if len(params) < num_inputs:
        raise TraceError(
            f"{type(model).__name__}.forward takes {len(params)} arguments but {num_inputs} example "
            "inputs were given."
        )
    concrete = {}
    for p in params[num_inputs:]:
        if p.default is inspect.Parameter.empty:
            raise TraceError(
                f"{type(model).__name__}.forward needs argument {p.name!r}, which has no default: "
                "pass it as one more example input."
            )
        concrete[p.name] = p.default
    return concrete


def _model_frame(frames: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame in the model's code: neither torch's nor splitfx's."""
    return next((f for f in reversed(frames) if not f.filename.startswith((_TORCH_DIR, _OWN_DIR))), None)


def _explain(model: nn.Module, tracer: SplitTracer, err: Exception) -> str:
    frame = _model_frame(traceback.extract_tb(err.__traceback__))
    where = f" at {frame.filename}:{frame.lineno} ({frame.line})" if frame else ""
    mode = "train" if model.training else "eval"
    if tracer.failed_in is not None:
        name, cls = tracer.failed_in
        what = f"module {name!r} ({cls.__name__})"
        advice = (f"Pass leaf_modules=[{name!r}] (or the class {cls.__name__}) to keep it opaque (it runs eagerly "
                  "and cannot be cut inside).")
    else:
        what = f"the top-level forward of {type(model).__name__}"
        advice = top_level(model)
    return (
        f"torch.fx could not trace {type(model).__name__} (in {mode} mode): {what} failed{where}: "
        f"{type(err).__name__}: {err}\n{advice}"
    )


class _UntraceableError(TraceError):
    """A trace that failed inside ``module`` ("" for the top-level forward), for the auto-leaf retry."""

    def __init__(self, message: str, module: str, reason: str):
        super().__init__(message)
        self.module, self.reason = module, reason


def _trace_once(model: nn.Module, tracer_args: tuple, concrete: dict[str, Any]) -> fx.Graph:
    tracer = SplitTracer(*tracer_args)
    try:
        with shape_branch.sizes_as_tuples():
            return tracer.trace(model, concrete_args=concrete or None)
    except TraceError:
        raise
    except Exception as err:
        module = tracer.failed_in[0] if tracer.failed_in is not None else ""
        raise _UntraceableError(_explain(model, tracer, err), module, first_line(err)) from err


def _given_up(model: nn.Module, err: _UntraceableError, auto: dict[str, str]) -> TraceError:
    """The error once auto_leaf stops: at its cap, said so; otherwise ``err``, with the modules auto_leaf
    had kept whole before it."""
    if err.module and len(auto) >= _MAX_AUTO_LEAVES:
        return TraceError(cap_reached(model, auto, err.module, err.reason))
    if auto:
        return TraceError(f"{err}\n(auto_leaf had kept these modules whole before: {', '.join(auto)}.)")
    return err


def _annotate_scopes(model: nn.Module, graph: fx.Graph) -> None:
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "call_module":
            scope = node.target
        else:
            stack = container_stack(node)
            scope = stack[-1] if stack else ""
        owner = modules.get(scope, model)
        node.meta["splitfx"] = {"scope": scope, "cls": type(owner).__name__}


def trace(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    leaf_modules: Sequence[LeafSpec] = (),
    auto_leaf: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule bound to it (see :mod:`splitfx.passes.bind`).

    The returned graph is valid in both train and eval mode: modules whose code branches on
    ``self.training`` are kept as leaves. With ``auto_leaf``, a submodule that fx cannot trace (data-
    dependent Python) becomes a leaf and the trace is repeated, up to a bound; ``gm.meta["auto_leaves"]``
    maps each such module to the reason. Otherwise raises :class:`TraceError` naming the module."""
    timm_classes, timm_functions = _timm_notrace()
    leaf_names = {s for s in leaf_modules if isinstance(s, str)}
    leaf_classes = timm_classes | {s for s in leaf_modules if isinstance(s, type)}
    leaf_classes.add(nn.modules.dropout._DropoutNd)
    unknown = sorted(n for n in leaf_names if n not in dict(model.named_modules()))
    if unknown:
        raise TraceError(f"leaf_modules names no module of {type(model).__name__}: {unknown}")
    concrete = _concrete_args(model, len(example_inputs))
    auto: dict[str, str] = {}

    for _ in range(_MAX_MODE_FIXES + _MAX_AUTO_LEAVES):
        tracer_args = (leaf_classes, leaf_names, timm_functions, example_inputs)
        graphs = {}
        try:
            for mode in (True, False):
                with training_mode(model, mode):
                    graphs[mode] = _trace_once(model, tracer_args, concrete)
        except _UntraceableError as err:
            if auto_leaf and err.module and err.module not in leaf_names and len(auto) < _MAX_AUTO_LEAVES:
                auto[err.module] = err.reason
                leaf_names.add(err.module)
                continue
            raise _given_up(model, err, auto) from err.__cause__
        fixes = reconcile(graphs[True], graphs[False])
        scopes = fixes.scopes
        if not scopes:
            apply(graphs[True], fixes)
            break
        if "" in scopes or scopes & leaf_names:
            raise TraceError(mode_branch(model))
        leaf_names |= scopes
    else:
        raise TraceError(f"{type(model).__name__}: too many modules to make leaves ({sorted(leaf_names)[:8]} ...).")

    graph = graphs[True]
    _annotate_scopes(model, graph)
    gm = bind(model, graph, type(model).__name__ + "Traced")
    gm.meta["auto_leaves"] = auto
    return gm
