"""Model names on the command line: timm names, ``torchvision:NAME`` and ``package.module:factory``."""
from __future__ import annotations

import importlib

from torch import nn

from ..base.errors import SplitFXError


def create_model(spec: str, **kwargs) -> nn.Module:
    """Build a randomly initialised model from ``spec`` (never downloads weights)."""
    if spec.startswith(("torchvision:", "tv:")):
        import torchvision

        return torchvision.models.get_model(spec.split(":", 1)[1], weights=None, **kwargs)
    if ":" in spec:
        module, factory = spec.split(":", 1)
        try:
            return getattr(importlib.import_module(module), factory)(**kwargs)
        except (ImportError, AttributeError) as err:
            raise SplitFXError(f"cannot build {spec!r}: {err}") from err
    import timm

    if not timm.is_model(spec):
        close = timm.list_models(f"*{spec}*")[:8]
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise SplitFXError(
            f"{spec!r} is not a timm model name.{hint} For torchvision use 'torchvision:NAME'; for your "
            "own model 'package.module:factory'."
        )
    return timm.create_model(spec, pretrained=False, **kwargs)


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model was designed for; timm records it, others get 3×224×224."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))
