"""Cost pass: probe a traced graph under ``FakeTensorMode`` into a ``networkx.DiGraph``.

No real compute runs: parameters, buffers and inputs become fake tensors, every node executes under
:class:`~splitfx.memory.SavedTensorMeter` (saved-for-backward storages, parameters and buffers
excluded) and ``FlopCounterMode``. Each node of the returned graph carries one
:class:`~splitfx.passes.node_cost.NodeCost` (what the node is, saves, outputs and costs; which ints
are the batch size, which constants the batch does not change: swin's ``H, W``, mvitv2's ``[H, W]``,
timm's ``create_attention_mask`` returning None). ``graph.graph["storages"]`` maps storage key →
bytes.
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
    UnsupportedOperatorException,
    unset_fake_temporarily,
)
from torch.func import functional_call
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode

from ..base.memory import weight_bytes
from ..base.meter import SavedTensorMeter, StorageKeys, state_keys
from ..base.tensors import node_parameters
from .node_cost import NodeCost, cost_graph
from .replay import draws_random

# What fake tensors cannot run (data-dependent Python, an output shape that depends on values, an op
# with no fake kernel): the probe runs such nodes on random real tensors, a simulated step falls back.
FAKE_LIMITS = (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException)

# Values a block can take as constants when planned for one input size (ints are shape ints).
CONSTANT_TYPES = (int, float, bool, type(None))
# What a tensor says about where and how it runs: autocast, .to(device) and AMP change it after
# planning, so it and whatever is computed from it (but None) are never constants.
_PLACEMENT = {"dtype", "device", "is_cuda", "is_cpu", "is_mps", "is_xpu", "is_meta", "is_floating_point",
              "is_complex", "element_size", "get_device", "type"}


def is_constant(value: Any) -> bool:
    """A plain constant, or a list, tuple or ``torch.Size`` of them (mvitv2's feature size ``[H, W]``,
    deeplabv3's ``x.shape[-2:]``)."""
    if type(value) in (list, tuple, torch.Size):
        return all(is_constant(v) for v in value)
    return type(value) in CONSTANT_TYPES


def _placement(node: fx.Node) -> bool:
    """Whether ``node`` reads a tensor's dtype or device (``x.dtype``, ``x.is_cuda``, ``x.get_device()``)."""
    if node.op == "call_method":
        return node.target in _PLACEMENT
    return node.op == "call_function" and node.target is getattr and node.args[1:2] and node.args[1] in _PLACEMENT


def _sizes_read(node: fx.Node, costs: dict[str, NodeCost]) -> bool:
    """Whether ``node`` picks sizes other than dim 0's out of a tensor's whole shape (``x.shape[-2:]``,
    ``C`` of ``B, T, C = x.size()``): sizes of the tensor itself, not computed from the batch even
    though the whole shape holds it."""
    if node.op != "call_function" or node.target is not operator.getitem or not isinstance(node.args[0], fx.Node):
        return False
    shape, index = node.args
    whole = ((shape.op == "call_function" and shape.target is getattr and shape.args[1:] == ("shape",))
             or (shape.op == "call_method" and shape.target == "size" and len(shape.args) == 1 and not shape.kwargs))
    source = shape.args[0] if whole else None
    if not isinstance(source, fx.Node) or costs[source.name].shape is None or not isinstance(index, int | slice):
        return False
    try:
        picked = range(len(costs[source.name].shape))[index]
    except IndexError:
        return False
    return 0 not in (picked if isinstance(picked, range) else [picked])


@dataclass
class Probe:
    """The cost graph plus the fake values needed to probe aux heads at any boundary later."""

    graph: nx.DiGraph
    fake_mode: FakeTensorMode
    values: dict[str, Any]
    exclude: StorageKeys
    outputs: Any = None
    _fakes: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _keep: list = field(default_factory=list)

    def fake(self, t: torch.Tensor) -> torch.Tensor:
        """The fake twin of a real tensor (memoised, keeps ``requires_grad``). A batch expanded from
        one sample (stride 0 in dim 0: what ``max_batch`` plans with, allocating nothing) becomes a
        whole batch, so that its storage costs what a real batch would."""
        hit = self._fakes.get(id(t))
        if hit is None:
            twin = self.fake_mode.from_tensor(t, static_shapes=True)
            if t.dim() and t.shape[0] > 1 and t.stride(0) == 0:
                with self.fake_mode:
                    twin = twin.clone(memory_format=torch.contiguous_format)
            # Keep ``t`` alive with its twin: a freed tensor's id may be reused by another one.
            hit = self._fakes[id(t)] = (t, twin)
        return hit[1]

    def run_real(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Run ``fn`` on random real tensors shaped like its fake arguments; fake outputs.

        For what fake tensors cannot do (data-dependent Python in a leaf module). The real tensors
        are kept alive so storage keys stay unique while probing."""
        def real(v):
            if not isinstance(v, FakeTensor):
                return v
            t = torch.randn(v.shape, dtype=v.dtype) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
            return t.requires_grad_(v.requires_grad)

        with unset_fake_temporarily():
            args, kwargs = tree_map(real, (args, kwargs))
            out = fn(*args, **kwargs)
        self._keep.append((args, kwargs, out))
        return tree_map(lambda v: self.fake(v) if isinstance(v, torch.Tensor) else v, out)

    def state(self, t: torch.Tensor) -> torch.Tensor:
        """The fake twin of a parameter or buffer: never counted as activation memory."""
        fake = self.fake(t)
        self.exclude.hold(fake)
        return fake

    def module_state(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {
            name: self.state(t)
            for name, t in (*module.named_parameters(remove_duplicate=False),
                            *module.named_buffers(remove_duplicate=False))
        }

    def run_module(self, module: torch.nn.Module, *args: Any) -> tuple[Any, list[tuple[int, int]], int]:
        """Run ``module`` on fake ``args``: its output, (storage key, bytes) it saves, its FLOPs."""
        saves: list[tuple[int, int]] = []
        state = self.module_state(module)
        with self.fake_mode, FlopCounterMode(display=False) as flops, SavedTensorMeter(
            self.exclude, on_save=lambda k, b: saves.append((k, b))
        ):
            out = functional_call(module, state, args)
        return out, saves, flops.get_total_flops()


class _ProbeInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, probe: Probe):
        super().__init__(gm, garbage_collect_values=False)
        self.probe = probe
        self.saves: dict[str, list[tuple[int, int]]] = {}
        self.current: str | None = None

    def on_save(self, key: int, nbytes: int) -> None:
        self.saves.setdefault(self.current, []).append((key, nbytes))

    def run_node(self, n: fx.Node) -> Any:
        self.current = n.name
        return super().run_node(n)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return self.probe.state(value) if isinstance(value, torch.Tensor) else value

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        try:
            return functional_call(module, self.probe.module_state(module), args, kwargs)
        except FAKE_LIMITS:
            self.probe.exclude.update(state_keys([module]))
            return self.probe.run_real(module, args, kwargs)

    def call_function(self, target, args, kwargs):
        try:
            return super().call_function(target, args, kwargs)
        except FAKE_LIMITS:
            return self.probe.run_real(target, args, kwargs)


def _tensor_bytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor))


def probe(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Probe:
    """Run ``gm`` once on fake copies of ``example_inputs`` and build its cost graph."""
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    result = Probe(nx.DiGraph(), fake_mode, {}, StorageKeys())
    model = gm.get_submodule("model")
    for t in (*model.parameters(), *model.buffers()):
        result.state(t)
    # Modules that reach the model's tensors by reference (RepL surrogates) save the real ones.
    result.exclude.update(state_keys([model]))
    interp = _ProbeInterpreter(gm, result)
    fake_inputs = [result.fake(x) for x in example_inputs]

    flops_before = 0
    seen_params: set[tuple[int, int, int]] = set()
    costs: dict[str, NodeCost] = {}
    with fake_mode, FlopCounterMode(display=False) as counter, SavedTensorMeter(result.exclude, on_save=interp.on_save):
        interp.args_iter = iter(fake_inputs)
        for n in gm.graph.nodes:
            value = interp.env[n] = interp.run_node(n)
            flops_now = counter.get_total_flops()
            meta = n.meta.get("splitfx", {})
            param_bytes = weight_bytes(node_parameters(gm, n), seen_params)  # counted at its first use
            is_tensor = isinstance(value, torch.Tensor)
            costs[n.name] = NodeCost(
                op=n.op,
                target=str(n.target),
                scope=meta.get("scope", ""),
                cls=meta.get("cls", ""),
                saved=tuple(dict.fromkeys(k for k, _ in interp.saves.get(n.name, ()))),
                out_bytes=_tensor_bytes(value),
                param_bytes=param_bytes,
                flops=flops_now - flops_before,
                is_tensor=is_tensor,
                shape=tuple(value.shape) if is_tensor else None,
                dtype=value.dtype if is_tensor else None,
                value=copy.deepcopy(value) if is_constant(value) else None,  # as made: a list may grow later
                random=draws_random(n),
            )
            flops_before = flops_now
            result.values[n.name] = value
    edges = ((inp.name, n.name) for n in gm.graph.nodes for inp in n.all_input_nodes)
    result.graph = cost_graph(_batch_marks(gm, costs, example_inputs), edges)
    result.graph.graph["storages"] = {k: b for saves in interp.saves.values() for k, b in saves}
    result.outputs = result.values[next(n for n in reversed(gm.graph.nodes) if n.op == "output").name]
    return result


def _batch_marks(gm: fx.GraphModule, costs: dict[str, NodeCost],
                 example_inputs: Sequence[torch.Tensor]) -> dict[str, NodeCost]:
    """``costs`` with the ints equal to the batch size, the plain constants the batch does not change
    (``static``) and the tensors whose dim 0 is the batch marked.

    The graph is re-run (shapes only) with the batch grown by one: what grows with it is batch. A
    constant is static only if it is the same then, was not changed in place after it was made, and
    is not computed from one that changed (``B // 2`` is 1 at 2 and 3; but ``x.shape[-2:]`` is picked
    from a shape that did, :func:`_sizes_read`) or from a tensor's dtype or device (other under
    autocast or after ``.to(device)``), except a None."""
    if not example_inputs or example_inputs[0].dim() == 0:
        return costs
    batch = example_inputs[0].shape[0]
    grown = [  # the first sample expanded: nothing allocated (Probe.fake makes the fake twin whole)
        x[:1].expand(batch + 1, *x.shape[1:]) if x.dim() and x.shape[0] == batch else x for x in example_inputs
    ]
    shadow = Probe(nx.DiGraph(), FakeTensorMode(allow_non_fake_inputs=True), {}, StorageKeys())
    interp = _ProbeInterpreter(gm, shadow)
    interp.args_iter = iter(shadow.fake(x) for x in grown)
    try:
        with shadow.fake_mode, torch.no_grad():
            for n in gm.graph.nodes:
                interp.env[n] = interp.run_node(n)
    except Exception:
        # The model does not accept another batch size: no batch ints to recompute, and dim 0 is
        # taken to be the batch wherever it has the batch's size.
        return {name: replace(c, batch_dim0=bool(c.is_tensor and c.shape and c.shape[0] == batch))
                for name, c in costs.items()}
    marked = dict(costs)
    moved: set[str] = set()  # non-tensor values that are no constant, and those computed from them
    for n, grown_value in interp.env.items():
        c = costs[n.name]
        inherited = not _sizes_read(n, costs) and any(p.name in moved for p in n.all_input_nodes)
        if not c.is_tensor and (_placement(n) or inherited):
            moved.add(n.name)
        if c.is_tensor and isinstance(grown_value, torch.Tensor) and c.shape:
            fold = c.shape[0] // batch  # dim 0 is batch × fold when it grows by fold with the batch
            scales = fold >= 1 and c.shape[0] == fold * batch and grown_value.shape[0] == fold * (batch + 1)
            marked[n.name] = replace(c, batch_dim0=scales, batch_fold=fold if scales else 1)
        elif is_constant(grown_value):
            if type(c.value) is not type(grown_value) or c.value != grown_value:
                moved.add(n.name)
            if grown_value is None:
                moved.discard(n.name)  # a None tells nothing of dtype or device
            if type(grown_value) is int and grown_value == batch + 1:
                marked[n.name] = replace(c, batch_int=c.value == batch)
            else:
                marked[n.name] = replace(c, static=n.name not in moved)  # e.g. swin's H, W, C
    return marked
