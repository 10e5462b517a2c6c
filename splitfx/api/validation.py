"""Arguments of ``plan``, ``convert`` and ``export_onnx`` checked where the user passed them.

Every refusal is an :class:`ArgumentTypeError` (also a ``TypeError``) or an :class:`ArgumentError`
(also a ``ValueError``) whose message names the argument, what was given and what to pass instead.
Checks are keyed by argument name, so an entry point may grow keywords this module does not know.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..base.errors import ArgumentError, ArgumentTypeError
from ..base.files import unwritable
from ..base.optimizers import OPTIMIZERS
from ..base.report import SplitPlan
from ..base.sizes import parse_bytes
from ..base.stage_plan import StageBalance
from ..base.tensors import check_dtypes
from ..passes.sharing import Tied
from ..planner.balance import Method
from ..recipes import Recipe, list_recipes
from ..runtime.split_module import SplitModule

REPLACE_MODES = ("tensor", "channel")


def _kind(value: Any) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__.split('.')[0]}.{t.__qualname__}"


def _int(name: str, value: Any, least: int, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, got {_kind(value)} {value!r}")
    if value < least:
        raise ArgumentError(f"{name} must be at least {least}, got {value}")


def _is_name(item: Any) -> bool:
    return isinstance(item, str)


def _is_leaf(item: Any) -> bool:
    return isinstance(item, str) or (isinstance(item, type) and issubclass(item, nn.Module))


def _names(name: str, value: Any, what: str, allowed: Callable[[Any], bool] = _is_name, none_ok: bool = True) -> None:
    """A list or tuple of names (or classes), never a bare str, which would be read letter by letter."""
    if value is None and none_ok:
        return
    if isinstance(value, str):
        raise ArgumentTypeError(f"{name}={value!r} is a str; {name} takes a list of {what}: {name}=[{value!r}]")
    if not isinstance(value, list | tuple):
        raise ArgumentTypeError(f"{name} takes a list of {what}, got {_kind(value)}")
    for i, item in enumerate(value):
        if not allowed(item):
            raise ArgumentTypeError(f"{name}[{i}] is {_kind(item)} {item!r}; {name} takes a list of {what}")


def _choice(name: str, value: Any, choices: tuple[str, ...] | list[str], extra: str = "") -> None:
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}{extra}")


def check_model(model: Any, name: str = "model") -> nn.Module:
    """An eager ``nn.Module`` splitfx can trace: not wrapped for data parallelism or compiled."""
    wrapped = getattr(model, "module", None) if isinstance(model, nn.Module) else None
    if isinstance(wrapped, nn.Module) and "DataParallel" in type(model).__name__:
        raise ArgumentTypeError(f"{name} is wrapped in {type(model).__name__}; pass {name}.module, and wrap the "
                                "SplitModule splitfx returns instead")
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):
        raise ArgumentTypeError(f"{name} is a torch.compile'd module; pass the module before compiling "
                                f"({name}._orig_mod)")
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"{name} must be a torch.nn.Module, got {_kind(model)}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ArgumentTypeError(f"{name} is a TorchScript module; pass the eager nn.Module it was scripted from")
    if "forward" in vars(model):
        raise ArgumentTypeError(
            f"{name}.forward was replaced on the instance; splitfx traces and runs the class's forward "
            f"({type(model).__name__}.forward), which would ignore it: define the new forward in a subclass "
            "or in a wrapper module")
    lazy = [n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ArgumentError(f"{name} has lazy parameters not initialised yet ({', '.join(lazy[:3])}"
                            f"{', ...' if len(lazy) > 3 else ''}): run it once on an example (model(x)) before "
                            "splitfx traces it; a factory for the command line should do that before returning it")
    return model


def check_inputs(example_inputs: Any, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A tensor, or a non-empty list/tuple of tensors, one per ``forward`` argument, with a non-empty batch."""
    if isinstance(example_inputs, torch.Tensor):
        inputs = (example_inputs,)
    elif isinstance(example_inputs, list | tuple) and example_inputs:
        inputs = tuple(example_inputs)
    else:
        hint = "; convert it with torch.from_numpy(x)" if type(example_inputs).__module__ == "numpy" else ""
        raise ArgumentTypeError("example_inputs must be a torch.Tensor or a non-empty list/tuple of tensors "
                                f"(one per forward argument), got {_kind(example_inputs)}{hint}")
    for i, x in enumerate(inputs):
        where = "example_inputs" if isinstance(example_inputs, torch.Tensor) else f"example_inputs[{i}]"
        if not isinstance(x, torch.Tensor):
            hint = " (torch.from_numpy(x))" if type(x).__module__ == "numpy" else ""
            raise ArgumentTypeError(f"{where} is {_kind(x)}; every example input must be a torch.Tensor{hint}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ArgumentError(f"{where} has shape {tuple(x.shape)}: it needs a batch of at least one sample in dim 0")
    check_dtypes(inputs, model, "example_inputs")
    _check_arity(inputs, model)
    return inputs


def _check_arity(inputs: tuple, model: nn.Module) -> None:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is p.empty]
    if len(inputs) > len(positional):
        raise ArgumentError(
            f"example_inputs holds {len(inputs)} tensors but {type(model).__name__}.forward takes "
            f"{len(positional)} ({', '.join(p.name for p in positional)}): a list or tuple is one tensor per "
            "forward argument; for one batch of samples pass torch.stack(samples)")
    if len(inputs) < len(required):
        raise ArgumentError(f"{type(model).__name__}.forward needs {', '.join(required)}; example_inputs gives "
                            f"{len(inputs)} tensor(s)")


def _recipe(value: Any) -> None:
    if isinstance(value, type) and issubclass(value, Recipe):
        raise ArgumentTypeError(f"recipe={value.__name__} is a class; pass an instance ({value.__name__}()) or "
                                "its registered name")
    if not isinstance(value, Recipe):
        _choice("recipe", value, list_recipes(), " (splitfx.list_recipes()), or a splitfx.Recipe instance")


STAGE_BALANCES = tuple(b.value for b in StageBalance)


def _stage_balance(value: Any) -> None:
    """``"flops"``, ``"time"`` or measured seconds per block (positive numbers)."""
    if isinstance(value, str):
        _choice("stage_balance", value, STAGE_BALANCES, " or a list of seconds per block")
        return
    if not isinstance(value, list | tuple) or not value:
        _raise_type("stage_balance", "'flops', 'time' or a list of seconds per block", value)
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf"):
            raise ArgumentError(f"stage_balance[{i}] is {t!r}; measured block times are positive seconds")


# One check per keyword of plan/convert; keywords without an entry are the planner's to check.
_KEYWORDS: dict[str, Callable[[Any], None]] = {
    "num_blocks": lambda v: _int("num_blocks", v, 1),
    "method": lambda v: _choice("method", v, [m.value for m in Method], " (or pass split_points=[...])"),
    "split_points": lambda v: _names("split_points", v, "module names"),
    "recipe": _recipe,
    "num_classes": lambda v: _int("num_classes", v, 2, none_ok=True),
    "leaf_modules": lambda v: _names("leaf_modules", v, "module names or nn.Module classes", _is_leaf, False),
    "replace": lambda v: _int("replace", v, 2) if isinstance(v, int) else _names("replace", v, "module names"),
    "replace_mode": lambda v: _choice("replace_mode", v, REPLACE_MODES),
    "loss_fn": lambda v: None if v is None or callable(v) else _raise_type("loss_fn", "a callable (output, target)", v),
    "plan": lambda v: None if v is None or isinstance(v, SplitPlan) else _raise_type("plan", "a SplitPlan", v),
    "max_cut_tensors": lambda v: _int("max_cut_tensors", v, 1, none_ok=True),
    "tolerance": lambda v: _fraction("tolerance", v),
    "auto_leaf": lambda v: None if isinstance(v, bool) else _raise_type("auto_leaf", "True or False", v),
    "memory_budget": lambda v: None if v is None else _size("memory_budget", v),
    "optimizer": lambda v: _choice("optimizer", v, tuple(sorted(OPTIMIZERS))),
    "tied": lambda v: _choice("tied", v, [t.value for t in Tied]),
    "stages": lambda v: _int("stages", v, 1, none_ok=True),
    "stage_balance": _stage_balance,
}


def _fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _raise_type(name, "a number such as 0.05", value)
    if not 0 <= value < 10:
        raise ArgumentError(f"{name} must be a non-negative fraction such as 0.05, got {value!r}")


def _size(name: str, value: Any) -> None:
    try:
        parse_bytes(value)
    except ValueError as err:
        raise ArgumentError(f"{name}: {err}") from None


def _raise_type(name: str, what: str, value: Any) -> None:
    raise ArgumentTypeError(f"{name} must be {what}, got {_kind(value)}")


def check_plan_arguments(model: Any, example_inputs: Any, **keywords: Any) -> None:
    """Everything ``plan`` (and ``convert``) takes, before any tracing; unknown keywords pass."""
    check_model(model)
    if isinstance(model, SplitModule):
        raise ArgumentTypeError("model is already a SplitModule; pass the original model (SplitModule.model)")
    inputs = check_inputs(example_inputs, model)
    _target(keywords.get("example_target"), inputs[0])
    if isinstance(keywords.get("split_points"), list | tuple) and not keywords["split_points"]:
        raise ArgumentError("split_points=[] names no module; pass None to balance by method=, or module names")
    if keywords.get("stages") is None and keywords.get("stage_balance", "flops") != "flops":
        raise ArgumentError("stage_balance= balances pipeline stages; give stages=S too")
    for name, value in keywords.items():
        _KEYWORDS.get(name, lambda _: None)(value)


def _target(target: Any, first: torch.Tensor) -> None:
    """An example target is a tensor with the inputs' batch."""
    if target is None:
        return
    if not isinstance(target, torch.Tensor):
        _raise_type("example_target", "a torch.Tensor shaped like the training target (batch first)", target)
    if target.dim() == 0 or target.shape[0] != first.shape[0]:
        raise ArgumentError(f"example_target has shape {tuple(target.shape)}; it needs the inputs' batch "
                            f"({first.shape[0]}) in dim 0, as the targets the model trains on")


def check_convert(model: Any, options: Mapping[str, Any]) -> None:
    """What would otherwise fail at the first training step: nothing to train, no loss for the output."""
    check_model(model)
    for name in ("plan", "loss_fn"):
        _KEYWORDS[name](options.get(name))
    if not any(p.requires_grad for p in model.parameters()):
        raise ArgumentError(f"{type(model).__name__} has no trainable parameters (none with requires_grad=True): "
                            "local training would have nothing to update")


def check_output(outputs: Any, loss_fn: Any, name: str) -> None:
    """The default loss (cross-entropy) needs the model's output to be one tensor."""
    if loss_fn is None and not isinstance(outputs, torch.Tensor):
        kind = "dict" if isinstance(outputs, Mapping) else _kind(outputs)
        raise ArgumentError(f"{name} returns a {kind}, not a tensor: pass convert(..., loss_fn=f) with "
                            "f(output, target) -> loss for the last block")


def check_export(model_or_split: Any, path: Any, example_inputs: Any, **keywords: Any) -> None:
    """``export_onnx``'s arguments, before anything is exported or written."""
    model = check_model(model_or_split, "model_or_split")
    if not isinstance(path, str | os.PathLike):
        raise ArgumentTypeError(f"path must be a str or os.PathLike, got {_kind(path)}")
    if os.path.isdir(path):
        raise ArgumentError(f"path {os.fspath(path)!r} is a folder; give the .onnx file to write")
    why = unwritable(path)
    if why:
        raise ArgumentError(f"path {os.fspath(path)!r}: {why}")
    check_inputs(example_inputs, model.model if isinstance(model, SplitModule) else model)
    for flag in ("dynamic_batch", "verify"):
        if flag in keywords and not isinstance(keywords[flag], bool):
            raise ArgumentTypeError(f"{flag} must be True or False, got {_kind(keywords[flag])}")
    if keywords.get("verify_on", "random") not in ("random", "example"):
        raise ArgumentError(f"verify_on must be 'random' or 'example', got {keywords['verify_on']!r}")
    external = keywords.get("external_data")
    if external is not None and not isinstance(external, bool):
        raise ArgumentTypeError(f"external_data must be True, False or None (automatic: PATH.data for weights "
                                f"over 1 GiB), got {_kind(external)} {external!r}")
    atol = keywords.get("atol", 0.0)
    if isinstance(atol, bool) or not isinstance(atol, int | float) or not atol >= 0:
        raise ArgumentError(f"atol must be a number ≥ 0, got {atol!r}")
