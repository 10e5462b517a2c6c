"""Model names on the command line: timm names, ``torchvision:NAME`` and ``package.module:factory``."""
from __future__ import annotations

import difflib
import importlib
import os
import sys

from torch import nn

from ..api.validation import check_model as check_module
from ..base.errors import SplitFXError

HOW = "For torchvision use 'torchvision:NAME'; for your own model 'package.module:factory'."


def check_model(spec: str) -> None:
    """Raise :class:`SplitFXError` unless ``spec`` names a model :func:`create_model` can build
    (nothing is built: cheap enough to check every name before any work starts)."""
    if spec.startswith(("torchvision:", "tv:")):
        import torchvision

        name, known = spec.split(":", 1)[1], torchvision.models.list_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=6)
            hint = f" Close matches: {', '.join(close)}." if close else " See torchvision.models.list_models()."
            raise SplitFXError(f"{spec!r}: torchvision has no model {name!r}.{hint}")
    elif ":" in spec:
        _factory(spec)
    else:
        import timm

        if not timm.is_model(spec):
            close = timm.list_models(f"*{spec}*")[:8] or difflib.get_close_matches(spec, timm.list_models(), n=6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise SplitFXError(f"{spec!r} is not a timm model name.{hint} {HOW}")


def _import(module: str):
    """``module``, found as ``python -m splitfx`` finds it: the current folder comes first, so the
    ``splitfx`` console script imports a ``module.py`` beside you too."""
    here = os.getcwd()
    if here in sys.path or "" in sys.path:
        return importlib.import_module(module)
    sys.path.insert(0, here)
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(here)


def _factory(spec: str):
    module, _, name = spec.partition(":")
    try:
        factory = getattr(_import(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise SplitFXError(f"cannot build {spec!r}: {err}. {HOW}") from err
    if not callable(factory):
        raise SplitFXError(f"cannot build {spec!r}: {name} is a {type(factory).__name__}, not a factory function")
    return factory


def create_model(spec: str, **kwargs) -> nn.Module:
    """Build a randomly initialised model from ``spec`` (never downloads weights)."""
    check_model(spec)
    if spec.startswith(("torchvision:", "tv:")):
        import torchvision

        return torchvision.models.get_model(spec.split(":", 1)[1], weights=None, **kwargs)
    if ":" in spec:
        model = _factory(spec)(**kwargs)
        if not isinstance(model, nn.Module):
            raise SplitFXError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
        return check_module(model, spec)
    import timm

    return timm.create_model(spec, pretrained=False, **kwargs)


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model was designed for; timm records it, others get 3×224×224."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))
