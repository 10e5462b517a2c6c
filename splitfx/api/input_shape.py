"""An example input the model cannot take, told apart from other failures of its first trace or run.

The model runs on fake tensors (no compute; its own parameters and buffers are not touched) at the
example's shape and at the sizes it declares: its first convolution's ``in_channels``, timm's
``patch_embed.img_size`` and ``pretrained_cfg["input_size"]``. Only where the first fails and one of
the others runs is the shape to blame, and the error names the size that runs. ``plan``, ``convert``
and ``export_onnx`` ask after a failure; the command line asks before tracing (``cli/preflight.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call

from ..base.errors import ArgumentError, first_line


@dataclass(frozen=True)
class ShapeMismatch:
    """An image batch the model cannot take, where it takes ``expected`` (C, H, W), as ``source`` says."""

    given: tuple[int, ...]
    expected: tuple[int, ...]
    source: str
    reason: str  # the model's own error on the given shape, its first line

    def __str__(self) -> str:
        return (f"{'×'.join(map(str, self.given))} inputs fail in the model ({self.reason}); it takes "
                f"{'×'.join(map(str, self.expected))} ({self.source})")


def shape_mismatch(model: nn.Module, x: torch.Tensor) -> ShapeMismatch | None:
    """Where ``model`` fails on the image batch ``x`` (N, C, H, W) but runs on a size it declares (its first
    convolution's in_channels, timm's patch embedding ``img_size`` or ``pretrained_cfg["input_size"]``):
    that size and why. Both runs are on fake tensors: nothing is computed and nothing real changes."""
    if x.dim() != 4:
        return None
    err = _fails_on(model, x)
    if err is None:
        return None
    given = tuple(x.shape[1:])
    for size, source in _declared_sizes(model, given):
        if _fails_on(model, x.new_empty((x.shape[0], *size))) is None:
            return ShapeMismatch(given, size, source, first_line(err))
    return None


def _fails_on(model: nn.Module, x: torch.Tensor) -> Exception | None:
    """The error ``model`` raises on ``x`` (None where it runs), from fake copies of ``x`` and of the model's
    parameters and buffers (so not even BatchNorm's batch count changes). The fake-tensor logger, which
    logs a traceback for every failing operation, is quiet meanwhile: the error is the caller's to report."""
    fake_log = logging.getLogger(FakeTensorMode.__module__)
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)
    try:
        return _run_fake(model, x)
    finally:
        fake_log.setLevel(level)


def _run_fake(model: nn.Module, x: torch.Tensor) -> Exception | None:
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
        state = {name: mode.from_tensor(t) for name, t in (*model.named_parameters(), *model.named_buffers())}
        try:
            functional_call(model, state, (mode.from_tensor(x),))
        except Exception as err:
            return err
    return None


def _declared_sizes(model: nn.Module, given: tuple[int, ...]) -> list[tuple[tuple[int, ...], str]]:
    """(C, H, W) sizes other than ``given`` that the model declares, each with where it declares it."""
    conv = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv[1].in_channels if conv else given[0]
    found = [((channels, *given[1:]), f"the in_channels of its first convolution, {conv[0]}")] if conv else []
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(img_size, tuple) and len(img_size) == 2:
        found.append(((channels, *img_size), "timm's patch_embed.img_size"))
    cfg_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if isinstance(cfg_size, tuple | list) and len(cfg_size) == 3:
        found.append(((channels, *cfg_size[1:]), "timm's pretrained_cfg input_size"))
    sizes: dict[tuple[int, ...], str] = {}
    for size, source in found:
        sizes.setdefault(size, source)
    sizes.pop(given, None)
    return list(sizes.items())


def check_example_shape(model: nn.Module, inputs: tuple[torch.Tensor, ...], cause: Exception) -> None:
    """Raise :class:`ArgumentError` from ``cause`` (the failure of the first trace or run of ``model``) where it
    came from the example's shape: the model fails on it and runs on a size it declares."""
    found = shape_mismatch(model, inputs[0]) if len(inputs) == 1 else None
    if found is not None:
        raise ArgumentError(f"example_inputs has shape {tuple(inputs[0].shape)}: {found}; pass a batch of shape "
                            f"(B, {', '.join(map(str, found.expected))})") from cause
