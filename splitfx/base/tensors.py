"""Tensor helpers every layer uses: a tensor's shape and dtype, example inputs as a tuple and in the
model's dtype, class scores, a module's tensor slots and the tensors an fx node reads."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from .errors import ArgumentError

Inputs = torch.Tensor | Sequence[torch.Tensor]
Slot = tuple[dict[str, torch.Tensor | None], str, torch.Tensor]


@dataclass(frozen=True)
class TensorSpec:
    """The shape (batch first) and dtype of one tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(t.shape), t.dtype)

    @property
    def floating(self) -> bool:
        return self.dtype.is_floating_point


def as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    """``x`` → ``(x,)``; a sequence of tensors → a tuple of them."""
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def check_dtypes(inputs: Sequence[torch.Tensor], model: nn.Module, name: str,
                 convert: str = "convert the model with model.to") -> None:
    """Floating ``inputs`` in the dtype of ``model``'s floating parameters, else an ArgumentError
    naming argument ``name``, both dtypes and what to do (torch's own error names neither; ``convert``
    says how to convert the model). Under autocast, which casts every floating input but a float64
    one, only float64 is refused."""
    ref = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    for i, x in enumerate(inputs):
        if ref is None or not x.is_floating_point() or x.dtype == ref:
            continue
        if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:
            continue
        where = name if len(inputs) == 1 else f"{name}[{i}]"
        raise ArgumentError(f"{where} is {x.dtype} and {type(model).__name__}'s parameters are {ref}: pass "
                            f"x.to({ref}) (or {convert}({x.dtype}))")


def class_scores(output: object) -> bool:
    """Whether ``output`` is one (batch, classes) tensor, what cross-entropy takes; an encoder's
    tokens or a dict of outputs are not."""
    return isinstance(output, torch.Tensor) and output.dim() == 2


def state_slots(root: nn.Module) -> list[Slot]:
    """Every parameter and buffer of ``root`` as ``(its module's _parameters or _buffers, name,
    tensor)``, so that a caller can swap the tensors in place (for fake ones, for ``meta`` ones) and
    put them back. Per module object, not per name: a module reached by two paths comes once."""
    return [(tensors, name, t) for m in root.modules() for tensors in (m._parameters, m._buffers)
            for name, t in tensors.items() if t is not None]


def node_tensors(root: nn.Module, node: fx.Node) -> list[torch.Tensor]:
    """The tensors ``node`` of a graph module ``root`` reads from it: the parameters and buffers of
    the module a ``call_module`` calls, or the tensor a ``get_attr`` fetches; none for other nodes."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        return [*module.parameters(), *module.buffers()]
    if node.op == "get_attr":
        attr = root
        for part in node.target.split("."):
            attr = getattr(attr, part)
        return [attr] if isinstance(attr, torch.Tensor) else []
    return []


def node_parameters(root: nn.Module, node: fx.Node) -> list[nn.Parameter]:
    """The parameters among :func:`node_tensors`: what a node trains."""
    return [t for t in node_tensors(root, node) if isinstance(t, nn.Parameter)]


def equal_outputs(a: object, b: object) -> bool:
    """Whether two model outputs hold the same tensors (``torch.equal``) at the same places: every leaf
    of every structure, found by its path (``['out']``, ``[0]``), so a dict and an OrderedDict with the
    same keys in the same order count as the same structure, as a user's ``out["out"]`` reads them;
    tensors must have the same dtype too."""
    from torch.utils._pytree import keystr, tree_flatten_with_path

    xs, ys = tree_flatten_with_path(a)[0], tree_flatten_with_path(b)[0]
    def same(u: object, v: object) -> bool:
        if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
            return isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.dtype == v.dtype and \
                torch.equal(u, v)
        return u == v

    return [keystr(p) for p, _ in xs] == [keystr(p) for p, _ in ys] and all(
        same(u, v) for (_, u), (_, v) in zip(xs, ys, strict=True))

