"""Verification of an exported ONNX file against PyTorch, and the report export returns.

The file runs in onnxruntime on seeded random inputs and is compared with eager PyTorch's float32
outputs; where those disagree, with PyTorch's float64 outputs (the exact answer), so an export that
is more accurate than PyTorch's own float32 is not refused, and a model whose float32 outputs are
not reproducible at its weights is named ill-conditioned rather than blamed on the exporter.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..base.errors import SplitFXError
from ..base.memory import weight_bytes

FLOAT64_UP_TO = 2**30  # the float64 reference copy (twice these bytes) is made for weights up to this, and beyond
# it where the copy takes at most half the memory the OS reports available (gemma4_vit_570m: 2.3 GB of weights)


@dataclass
class ExportReport:
    path: str
    batch_sizes: tuple[int, ...]
    max_abs_diff: float  # over all verified batch sizes and outputs
    top1_equal: bool
    max_abs_output: float = 0.0  # the tolerance is atol × max(1, this): fp32 rounding grows with magnitude
    exporter: str = "dynamo"  # or "dynamo, unoptimized (...)", or "torchscript": the fallbacks
    data_path: str | None = None  # PATH.data, where the weights were written as external data
    reference: str = "PyTorch"  # or "PyTorch float64", where onnxruntime matched the exact outputs instead
    fixed_batch: str | None = None  # why the batch is fixed (the example's) where a dynamic one was asked for

    def within(self, atol: float) -> bool:
        """Whether the outputs agree within ``atol × max(1, max |output|)`` with the same top-1."""
        return self.max_abs_diff <= atol * max(1.0, self.max_abs_output) and self.top1_equal

    def __str__(self) -> str:
        weights = f" and its weights {self.data_path}" if self.data_path else ""
        return (f"wrote {self.path}{weights} (exporter: {self.exporter}): "
                f"onnxruntime vs {self.reference} at batch sizes {list(self.batch_sizes)}: "
                f"max abs diff {self.max_abs_diff:.2e} (outputs up to {self.max_abs_output:.2e}), "
                f"top-1 {'identical' if self.top1_equal else 'DIFFERENT'}"
                + (f"; the batch is fixed at {self.batch_sizes[0]}, as no exporter gave a dynamic one "
                   f"({self.fixed_batch})" if self.fixed_batch else ""))


def _outputs(value) -> list[torch.Tensor]:
    """Every tensor of an output structure (a tensor, tuple, list or dict, nested), in the order the
    exporters flatten it (torch's pytree order: a dict's values, not its keys)."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def verify_export(model: nn.Module, onnx_path: str, inputs: tuple, dynamic_batch: bool, atol: float,
                  path: str, on_example: bool = False, external: bool = False) -> ExportReport:
    """onnxruntime against PyTorch's float32 outputs, and where those disagree, against PyTorch's
    float64 outputs: the exact answer, which the exported graph may match more closely than PyTorch's
    own float32 (onnxruntime folds BatchNorm into the convolution, so it skips the cancellation of
    ``conv(x) − running_mean`` when both are large). The inputs are seeded Gaussian noise of the
    example's shape, or with ``on_example`` the example itself (see :func:`_example_feeds`).
    ``external``: the weights are in external data, which onnxruntime then reads in place (see
    :func:`_onnxruntime_outputs`)."""
    batches = (inputs[0].shape[0], inputs[0].shape[0] + 1) if dynamic_batch else (inputs[0].shape[0],)
    feeds = (_example_feeds if on_example else _random_feeds)(inputs, batches)
    expected = _torch_outputs(model, feeds)
    got = _onnxruntime_outputs(onnx_path, feeds, external)
    report = _compare(expected, got, path, batches)
    if report.within(atol):
        return report
    limit = atol * max(1.0, report.max_abs_output)
    message = (f"ONNX verification failed for {type(model).__name__}: max abs diff {report.max_abs_diff:.2e} "
               f"(limit {limit:.1e} for outputs up to {report.max_abs_output:.1e}), top-1 "
               f"{'identical' if report.top1_equal else 'different'}")
    exact = _float64_outputs(model, feeds)
    if exact is None:
        raise SplitFXError(message + " (no float64 reference: the weights are over 1 GiB and their float64 copy "
                           "would take over half the available memory, or they do not run in float64); "
                           "nothing written")
    against_exact = _compare(exact, got, path, batches, reference="PyTorch float64")
    if against_exact.within(atol):
        return against_exact
    own = _compare(exact, expected, path, batches)
    if not own.within(atol):
        top1 = "identical" if own.top1_equal else "different"
        message += (f". The model is ill-conditioned at these weights: PyTorch's own float32 outputs differ from "
                    f"its float64 ones by {own.max_abs_diff:.2e} (top-1 {top1}), "
                    "so no float32 runtime can be checked against them; verify with trained weights (or "
                    "calibrated BatchNorm statistics), on inputs like those they were fitted to "
                    "(verify_on='example'), or pass verify=False")
    raise SplitFXError(message + "; nothing written")


def _random_feeds(inputs: tuple, batches: tuple[int, ...]) -> list[tuple]:
    """Seeded Gaussian noise of each floating input's shape at each batch size (the others: the
    example's first sample, repeated)."""
    generator = torch.Generator().manual_seed(0)
    return [tuple(torch.randn((batch, *x.shape[1:]), generator=generator, dtype=x.dtype) if x.is_floating_point()
                  else x[:1].expand(batch, *x.shape[1:]) for x in inputs) for batch in batches]


def _example_feeds(inputs: tuple, batches: tuple[int, ...]) -> list[tuple]:
    """The example's own samples, cycled to each batch size: where the weights were fitted to data like
    the example (BatchNorm statistics estimated on it), noise can be far outside it, and a deep
    network there amplifies float32 rounding until no float32 runtime agrees with another
    (random-init RepVGG-D2se with statistics from its batch: logits of 8e4 on noise, 0.06 on it)."""
    return [tuple(x[torch.arange(batch) % x.shape[0]] for x in inputs) for batch in batches]


def _float64_outputs(model: nn.Module, feeds: list[tuple]) -> list[list[np.ndarray]] | None:
    """PyTorch's float64 outputs from a float64 copy of ``model``; None where the weights are over
    :data:`FLOAT64_UP_TO` bytes and the copy (twice that) would take more than half the available
    memory, or where the copy cannot run."""
    size = weight_bytes(model)
    if size > FLOAT64_UP_TO and 2 * size > available_memory() // 2:
        return None
    try:
        return _torch_outputs(copy.deepcopy(model).double(), feeds, torch.float64)
    except (RuntimeError, MemoryError, NotImplementedError):
        return None


def available_memory() -> int:
    """Bytes the OS can hand out without swapping (Linux's ``MemAvailable``); 0 where it does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _torch_outputs(model: nn.Module, feeds: list[tuple], dtype: torch.dtype | None = None) -> list[list[np.ndarray]]:
    """PyTorch's outputs for each feed (floating inputs cast to ``dtype``, by default the model's
    own), as float64 arrays."""
    dtype = dtype or next((t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()),
                          torch.float32)
    with torch.no_grad():
        return [[e.double().numpy() for e in _outputs(model(*(x.to(dtype) if x.is_floating_point() else x
                                                              for x in feed)))] for feed in feeds]


def _compare(expected: list[list[np.ndarray]], got: list[list[np.ndarray]], path: str, batches: tuple[int, ...],
             reference: str = "PyTorch") -> ExportReport:
    worst, same_top1, scale = 0.0, True, 0.0
    for want, have in zip(expected, got, strict=True):
        if not want:
            raise SplitFXError("ONNX verification compared nothing: the model's output holds no tensor; nothing "
                               "written")
        if len(want) != len(have) or any(e.shape != g.shape for e, g in zip(want, have, strict=False)):
            raise SplitFXError(f"ONNX verification failed: {reference} gives {len(want)} output tensor(s) of shapes "
                               f"{[e.shape for e in want]}, the ONNX file {len(have)} of shapes "
                               f"{[g.shape for g in have]}; nothing written")
        for e, g in zip(want, have, strict=True):
            worst = max(worst, float(np.max(np.abs(e - g))) if e.size else 0.0)
            scale = max(scale, float(np.max(np.abs(e))) if e.size else 0.0)
            if e.ndim == 2:
                same_top1 &= bool(np.array_equal(e.argmax(1), g.argmax(1)))
    return ExportReport(path, batches, worst, same_top1, scale, reference=reference)


def _onnxruntime_outputs(onnx_path: str, feeds: list[tuple], external: bool = False) -> list[list[np.ndarray]]:
    """onnxruntime's outputs for each feed. Its CPU memory arena is off (an arena keeps its peak for
    the life of the process), and the session, with its copy of the weights, is gone on return.
    ``external``: the weights are external data, which onnxruntime maps from the file; its
    pre-packing of matrix-multiply weights is off, since it would copy them all into memory beside
    PyTorch's (aimv2_3b: 10 GiB more, over what the machine has), so they stay file pages, which
    the OS can drop and read back."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    if external:
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [session.run(None, {n: x.numpy() for n, x in zip(names, feed, strict=False)}) for feed in feeds]
