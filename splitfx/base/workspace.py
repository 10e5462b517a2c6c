"""Bytes a kernel allocates for itself beyond the tensors it returns: a backend's scratch.

:class:`~splitfx.base.live_bytes.LiveBytes` sees tensors only; the allocator also holds these
buffers while the op runs. On CPU, oneDNN (mkldnn) convolutions reorder their operands into blocked
layouts and compute gradients there before copying them out, and this is the only scratch seen in a
training step on the machines here: at K=4 and 8 it put resnet50's measured local step 5 % above the
tensors' peak (docs/benchmarks.md, "The memory a device sees"). :func:`onednn_scratch` models it
from the op's shapes, fitted to the bytes the profiler's memory timeline records inside single
``aten::convolution`` and ``aten::convolution_backward`` calls (``python docs/conv_scratch.py``
prints the measured and modelled bytes side by side) of float32 2-D convolutions, on x86 CPUs with
AVX-512 (an Intel Xeon and an AMD EPYC, torch 2.14's oneDNN). Elsewhere the model says 0 and the
prediction counts tensors only: limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), oneDNN's weight
gradients keep one partial copy per sample, 8× the weights at batch 8, which this model does not
describe. It also says 0 where torch picks another kernel (a 1×1, stride-1 convolution at batch < 16
on one thread runs as a matrix product, with no scratch), for 1-D, 3-D and transposed convolutions
(not fitted), and on CUDA (cuDNN's workspace is not modelled).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

aten = torch.ops.aten
BLOCK = 8  # input channels below this stay in a plain layout: only the output side is reordered


def onednn_scratch(func: Any, args: tuple, out: Any) -> int:
    """Bytes held inside ``func`` (called with ``args``, returning ``out``) beyond its outputs when it is
    a CPU convolution run by oneDNN, else 0."""
    if func is aten.convolution.default and len(args) == 9:
        x, w, _, stride, padding, dilation, transposed, output_padding, groups = args
        if transposed or not _onednn(x, w, stride, padding, dilation, transposed, output_padding, groups):
            return 0
        return max(_bytes(x) + _bytes(w), _bytes(out))
    if func is aten.convolution_backward.default and len(args) == 11:
        g, x, w, _, stride, padding, dilation, transposed, output_padding, groups, mask = args
        if transposed or not _onednn(x, w, stride, padding, dilation, transposed, output_padding, groups):
            return 0
        inp, out, weight = _bytes(x), _bytes(g), _bytes(w)
        if x.shape[1] < BLOCK:
            return out + weight
        if groups > 1 or all(s == 1 for s in stride) or not mask[0]:
            return inp + out + weight
        return max(inp + out, 2 * inp - weight)  # strided: measured at about twice the input
    return 0


def _onednn(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, transposed, output_padding,
            groups) -> bool:
    """Whether torch runs this float32 2-D convolution with oneDNN (its own backend choice, shapes only)
    on a CPU of the kind the model was fitted on."""
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype != torch.float32 or not fitted_here():
        return False
    try:
        backend = torch._C._select_conv_backend(x, w, None, list(stride), list(padding), list(dilation),
                                                transposed, list(output_padding), groups, None)
    except (RuntimeError, TypeError, AttributeError):  # a torch without the private selector: model nothing
        return False
    return backend.name == "Mkldnn"


@functools.cache
def fitted_here() -> bool:
    """Whether oneDNN runs with AVX-512 here, as where the model was fitted (torch's own capability,
    and no lower ISA forced through oneDNN's environment variable)."""
    forced = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and (not forced or forced.startswith("AVX512")
                                                                     or forced in ("ALL", "AVX10_1_512"))


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
