"""The copy of a model that is exported to ONNX: rewritten where onnxruntime would compute otherwise.

* **Constant padding before a max pool.** onnxruntime's graph optimizer ``Pad_Fusion`` (added in
  microsoft/onnxruntime#18136, on by default at every optimisation level) folds a ``Pad`` with value
  0 into a following ``MaxPool``'s ``pads`` — but MaxPool pads with −inf, so wherever a window's real
  values are all negative the result changes (the same bug as onnxsim#290 / onnx/optimizer#318).
  BiT ResNet-V2's stem is ``ConstantPad2d(1, 0) → MaxPool2d``: 11.2 of difference on stem outputs of
  magnitude 59, 9e-4 on the logits, ten times the tolerance with the same top-1. Constant padding
  modules are exported as concatenations with constant fills, which no optimizer folds.
* **Weight transforms.** Weight-standardised convolutions (``StdConv2d``, ``ScaledStdConv2d``, their
  ``Same`` variants) normalise their weight in every ``forward``; in eval mode it is a constant, so
  it is computed once, by PyTorch, and exported as a plain convolution.

The model itself is never changed; without anything to rewrite it is exported as it is. The copy
shares the model's parameters and buffers (export only reads them): a second set of weights would
not fit beside a billion-parameter model's.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class _ConvWeight(TorchFunctionMode):
    """Catches the weight a module hands to ``F.conv2d``."""

    def __init__(self):
        super().__init__()
        self.weight: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and self.weight is None:
            self.weight = args[1] if len(args) > 1 else kwargs["weight"]
        return func(*args, **kwargs)


class FoldedConv2d(nn.Module):
    """A convolution whose weight transform has been computed: what ``conv`` computes in eval mode."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.kernel_size, self.same_pad = conv.kernel_size, bool(getattr(conv, "same_pad", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            from timm.layers import pad_same  # only timm's Same convolutions set same_pad

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _effective_weight(conv: nn.Conv2d) -> torch.Tensor | None:
    """The weight ``conv`` convolves with, when it is not its own parameter (None otherwise)."""
    probe = torch.zeros(1, conv.in_channels, *(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation,
                                                                                 strict=True)),
                        dtype=conv.weight.dtype, device=conv.weight.device)
    with torch.no_grad(), _ConvWeight() as catch:
        conv(probe)
    return None if catch.weight is None or catch.weight is conv.weight else catch.weight


class ConcatPad(nn.Module):
    """Constant padding as a concatenation with constant fills (what ``nn.ConstantPad*d`` computes)."""

    def __init__(self, padding: tuple[int, ...], value: float):
        super().__init__()
        self.padding, self.value = tuple(padding), value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.padding) // 2):
            dim = x.dim() - 1 - i
            before, after = self.padding[2 * i], self.padding[2 * i + 1]
            parts = [x]
            for width, at in ((before, 0), (after, len(parts) + 1)):
                if width:
                    shape = list(x.shape)
                    shape[dim] = width
                    parts.insert(at, x.new_full(shape, self.value))
            x = torch.cat(parts, dim) if len(parts) > 1 else x
        return x


def _replacement(module: nn.Module) -> nn.Module | None:
    """What ``module`` is exported as, or None when it is exported as it is."""
    if isinstance(module, nn.modules.padding._ConstantPadNd) and min(module.padding) >= 0:
        return ConcatPad(module.padding, module.value)
    if isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d:
        weight = _effective_weight(module)
        return FoldedConv2d(module, weight) if weight is not None else None
    return None


def exportable(model: nn.Module) -> nn.Module:
    """``model`` itself, or an eval-mode copy with the rewrites of the module docstring."""
    found = {name: new for name, m in model.named_modules() if (new := _replacement(m)) is not None}
    if not found:
        return model
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    copied = copy.deepcopy(model, shared).eval()
    for name, new in found.items():
        parent, _, child = name.rpartition(".")
        setattr(copied.get_submodule(parent), child, new)
    return copied
