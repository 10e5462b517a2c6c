"""ONNX export for inference, verified against onnxruntime.

What is exported is the user's own model in eval mode: aux heads and detach nodes live only in the
SplitModule, and RepL surrogates are folded into a copy of the model (the user's own is never changed).
The dynamo exporter has open numerics bugs, so every export is run with onnxruntime at two batch
sizes and compared with eager PyTorch; a file that fails is never left at ``path``. The tolerance is
``atol`` (1e-4) for outputs of magnitude up to 1 and relative beyond: randomly initialised models
produce logits in the hundreds, where fp32 rounding alone exceeds 1e-4 (DLA-34: 1.8e-4 at 482).
Where onnxruntime misses PyTorch's float32 outputs it is compared with PyTorch's float64 ones, the
exact answer; a model whose float32 outputs miss its own float64 ones is reported as ill-conditioned
at its weights (random-init EfficientNetV2-M in eval mode: logits of 2.9e6, float32 off by 2.7e6).

Weights over 1 GiB are written as ONNX external data, in ``PATH.data`` beside ``PATH`` (one ONNX file
cannot hold more than 2 GiB); both files are written in a temp folder and moved into place together.
Export and verification hold one copy of the weights at a time where they can: the check that the
model is unchanged compares checksums, PyTorch's reference outputs are computed before onnxruntime
loads the file, and the onnxruntime session, without its memory arena, is gone before this returns.
"""
from __future__ import annotations

import contextlib
import copy
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base.errors import ArgumentError, SplitFXError, first_line
from ..base.files import atomic_files
from ..base.tensors import Inputs, as_tuple
from ..passes.trace import training_mode
from ..runtime.split_module import SplitModule
from .folding import exportable
from .validation import check_export

EXTERNAL_ABOVE = 2**30  # external_data=None: weights of more bytes than this go to PATH.data
FLOAT64_UP_TO = 2**30  # the float64 reference copy (twice these bytes) is made for weights up to this
ONE_FILE_LIMIT = 2**31  # protobuf's limit: one ONNX file cannot hold more
DATA = ".data"  # the external data file is PATH + DATA


@dataclass
class ExportReport:
    path: str
    batch_sizes: tuple[int, ...]
    max_abs_diff: float  # over all verified batch sizes and outputs
    top1_equal: bool
    max_abs_output: float = 0.0  # the tolerance is atol × max(1, this): fp32 rounding grows with magnitude
    exporter: str = "dynamo"  # or "torchscript", the fallback
    data_path: str | None = None  # PATH.data, where the weights were written as external data
    reference: str = "PyTorch"  # or "PyTorch float64", where onnxruntime matched the exact outputs instead
    fixed_batch: str | None = None  # why the batch is fixed (the example's) where a dynamic one was asked for

    def within(self, atol: float) -> bool:
        """Whether the outputs agree within ``atol × max(1, max |output|)`` with the same top-1."""
        return self.max_abs_diff <= atol * max(1.0, self.max_abs_output) and self.top1_equal

    def __str__(self) -> str:
        weights = f" and its weights {self.data_path}" if self.data_path else ""
        return (f"wrote {self.path}{weights} ({self.exporter} exporter): "
                f"onnxruntime vs {self.reference} at batch sizes {list(self.batch_sizes)}: "
                f"max abs diff {self.max_abs_diff:.2e} (outputs up to {self.max_abs_output:.2e}), "
                f"top-1 {'identical' if self.top1_equal else 'DIFFERENT'}"
                + (f"; the batch is fixed at {self.batch_sizes[0]}, as no exporter gave a dynamic one "
                   f"({self.fixed_batch})" if self.fixed_batch else ""))


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore every module's training and requires_grad flags, and fail loudly if export changed a tensor."""
    before = _fingerprints(model)
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with training_mode(model, False):
            yield
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    after = _fingerprints(model)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        raise SplitFXError(f"ONNX export changed the model's state ({changed[:3]}); please report this")


def _fingerprints(model: nn.Module) -> dict[str, tuple]:
    """Each state tensor's dtype, shape and CRC-32 of its bytes: enough to see a change without a
    second copy of the weights (a billion-parameter model's would not fit beside the first)."""
    return {k: (v.dtype, tuple(v.shape), _crc32(v)) for k, v in model.state_dict().items()}


def _crc32(tensor: torch.Tensor) -> int:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def _outputs(value) -> list[torch.Tensor]:
    return [value] if isinstance(value, torch.Tensor) else [t for t in value if isinstance(t, torch.Tensor)]


def export_onnx(
    model_or_split: nn.Module,
    path: str | os.PathLike,
    example_inputs: Inputs,
    *,
    dynamic_batch: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
    external_data: bool | None = None,
) -> ExportReport:
    """Export the eval-mode model to ``path`` and (by default) verify it with onnxruntime.

    Accepts a SplitModule (its aux heads dropped; RepL blocks folded into a copy of the model) or any
    ``nn.Module``. Neither is changed: training flags, parameters, buffers and ``requires_grad`` are
    left exactly as they were. A model on another device is exported from a CPU copy.
    ``external_data``: True writes the weights to ``PATH.data`` beside ``path`` (ONNX external data),
    False into ``path`` itself (at most 2 GiB), None (default) the former for weights over 1 GiB."""
    check_export(**locals())
    model = _exportable(model_or_split)
    external = _external(model, external_data)
    given = tuple(x.cpu() for x in as_tuple(example_inputs))
    inputs = given
    if dynamic_batch and given[0].shape[0] < 2:
        inputs = tuple(x.expand(2, *x.shape[1:]).contiguous() for x in given)  # batch 1 gets specialised
    path = os.fspath(path)
    with _untouched(model), atomic_files(path) as folder:
        tmp = os.path.join(folder, os.path.basename(path))
        exporter, fixed = _export(exportable(model), inputs, given, tmp, dynamic_batch, external)
        if fixed is not None:
            inputs = given  # the file takes the example's own batch size
        report = ExportReport(path, (given[0].shape[0],) if fixed else (), 0.0, True)
        if verify:
            report = _verify(model, tmp, inputs, dynamic_batch and fixed is None, atol, path)
        report.exporter, report.fixed_batch = exporter, fixed
        report.data_path = path + DATA if os.path.exists(tmp + DATA) else None
    return report


def _external(model: nn.Module, external_data: bool | None) -> bool:
    """Whether the weights go to ``PATH.data``: as asked, or where they are over :data:`EXTERNAL_ABOVE`."""
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if external_data is False and size > ONE_FILE_LIMIT:
        raise ArgumentError(f"external_data=False, but the weights are {size / 2**30:.1f} GiB and one ONNX file "
                            "holds at most 2 GiB; pass external_data=True or None")
    return size > EXTERNAL_ABOVE if external_data is None else external_data


def _exportable(model_or_split: nn.Module) -> nn.Module:
    """The plain model to export: a SplitModule's own, or, where that would need changing (RepL folded,
    another device), a copy of it."""
    if isinstance(model_or_split, SplitModule):
        if len(model_or_split.repl):
            return copy.deepcopy(model_or_split).materialize().cpu()
        model_or_split = model_or_split.model
    on_cpu = all(t.device.type == "cpu" for t in (*model_or_split.parameters(), *model_or_split.buffers()))
    return model_or_split if on_cpu else copy.deepcopy(model_or_split).cpu()


def _export(model: nn.Module, inputs: tuple, given: tuple, path: str, dynamic_batch: bool,
            external: bool) -> tuple[str, str | None]:
    """The dynamo exporter first; where it fails, the TorchScript exporter; where both fail with a
    dynamic batch, dynamo with the batch fixed (CondConv's per-sample kernels are a convolution
    whose group count is the batch size, and ONNX's ``group`` is a constant attribute), at the batch
    size of the ``given`` example. Returns the exporter and, where the batch had to be fixed, why.

    Dynamo exports under SDPA's math kernel. Under the CPU flash kernel torch.export records
    ``sdpa(q, k, v, attn_mask).transpose(1, 2).reshape(...)`` as a view of that kernel's (B, N, H, D)
    layout; the exporter's decompositions then trace the math kernel's (B, H, N, D) layout and the view
    fails ("Cannot view a tensor with shape [s, N, H, D] and strides ...", pytorch/pytorch#141107 and
    #136543), so BEiT and MaxViT fell back to TorchScript, which holds ~5.5× the weights while exporting.
    The ONNX graph is the same under either kernel (SDPA becomes MatMul and Softmax).

    ``path`` is in a folder of its own: whatever a failed attempt left there is removed."""
    try:
        _dynamo(model, inputs, path, dynamic_batch, external)
        return "dynamo", None
    except Exception as dynamo_err:
        _empty(os.path.dirname(path))
        try:
            _torchscript(model, inputs, path, dynamic_batch, external)
            return "torchscript", None
        except Exception as err:
            failures = f"dynamo: {first_line(dynamo_err)}; torchscript: {first_line(err)}"
            if not dynamic_batch:
                raise SplitFXError(f"torch.onnx.export failed for {type(model).__name__}: {failures}") from err
        _empty(os.path.dirname(path))
        try:
            _dynamo(model, given, path, False, external)
            return "dynamo", failures
        except Exception as fixed_err:
            raise SplitFXError(f"torch.onnx.export failed for {type(model).__name__}: {failures}; dynamo at a "
                               f"fixed batch: {first_line(fixed_err)}") from fixed_err


def _dynamo(model: nn.Module, inputs: tuple, path: str, dynamic_batch: bool, external: bool) -> None:
    from .onnx_ops import TRANSLATIONS  # onnxscript's torch_lib, only when exporting

    dynamic = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic_batch else None
    with sdpa_kernel(SDPBackend.MATH):
        torch.onnx.export(model, inputs, path, dynamo=True, dynamic_shapes=dynamic, external_data=external,
                          custom_translation_table=TRANSLATIONS)


def _torchscript(model: nn.Module, inputs: tuple, path: str, dynamic_batch: bool, external: bool) -> None:
    names = [f"input{i}" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    torch.onnx.export(model, inputs, path, dynamo=False, input_names=names, dynamic_axes=axes)
    if external or len(os.listdir(os.path.dirname(path))) > 1:
        _gather_weights(path)


def _empty(folder: str) -> None:
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


def _gather_weights(path: str) -> None:
    """Rewrite ``path`` with its weights in ``PATH.data``, as the dynamo exporter writes them: the
    TorchScript exporter has no such option (and over 2 GiB writes one file per tensor, removed here)."""
    from onnxscript import ir

    folder, name = os.path.split(path)
    model = ir.load(path)
    ir.save(model, path, external_data=name + DATA)
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            value.const_value.release()  # unmap the per-tensor file
    for other in set(os.listdir(folder)) - {name, name + DATA}:
        os.remove(os.path.join(folder, other))


def _verify(model: nn.Module, onnx_path: str, inputs: tuple, dynamic_batch: bool, atol: float,
            path: str) -> ExportReport:
    """onnxruntime against PyTorch's float32 outputs, and where those disagree, against PyTorch's
    float64 outputs: the exact answer, which the exported graph may match more closely than PyTorch's
    own float32 (onnxruntime folds BatchNorm into the convolution, so it skips the cancellation of
    ``conv(x) − running_mean`` when both are large)."""
    batches = (inputs[0].shape[0], inputs[0].shape[0] + 1) if dynamic_batch else (inputs[0].shape[0],)
    generator = torch.Generator().manual_seed(0)
    feeds = [tuple(torch.randn((batch, *x.shape[1:]), generator=generator, dtype=x.dtype) if x.is_floating_point()
                   else x[:1].expand(batch, *x.shape[1:]) for x in inputs) for batch in batches]
    expected = _torch_outputs(model, feeds)
    got = _onnxruntime_outputs(onnx_path, feeds)
    report = _compare(expected, got, path, batches)
    if report.within(atol):
        return report
    limit = atol * max(1.0, report.max_abs_output)
    message = (f"ONNX verification failed for {type(model).__name__}: max abs diff {report.max_abs_diff:.2e} "
               f"(limit {limit:.1e} for outputs up to {report.max_abs_output:.1e}), top-1 "
               f"{'identical' if report.top1_equal else 'different'}")
    exact = _float64_outputs(model, feeds)
    if exact is None:
        raise SplitFXError(message + " (no float64 reference: the weights are over 1 GiB or do not run in "
                           "float64); nothing written")
    against_exact = _compare(exact, got, path, batches, reference="PyTorch float64")
    if against_exact.within(atol):
        return against_exact
    own = _compare(exact, expected, path, batches)
    if not own.within(atol):
        top1 = "identical" if own.top1_equal else "different"
        message += (f". The model is ill-conditioned at these weights: PyTorch's own float32 outputs differ from "
                    f"its float64 ones by {own.max_abs_diff:.2e} (top-1 {top1}), "
                    "so no float32 runtime can be checked against them; verify with trained weights (or "
                    "calibrated BatchNorm statistics), or pass verify=False")
    raise SplitFXError(message + "; nothing written")


def _float64_outputs(model: nn.Module, feeds: list[tuple]) -> list[list[np.ndarray]] | None:
    """PyTorch's float64 outputs from a float64 copy of ``model``; None where the weights are over
    :data:`FLOAT64_UP_TO` bytes (the copy would be twice that) or the copy cannot run."""
    if sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) > FLOAT64_UP_TO:
        return None
    try:
        return _torch_outputs(copy.deepcopy(model).double(), feeds)
    except (RuntimeError, MemoryError, NotImplementedError):
        return None


def _torch_outputs(model: nn.Module, feeds: list[tuple]) -> list[list[np.ndarray]]:
    """PyTorch's outputs for each feed (floating inputs cast to the model's dtype), as float64 arrays."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    with torch.no_grad():
        return [[e.double().numpy() for e in _outputs(model(*(x.to(dtype) if x.is_floating_point() else x
                                                              for x in feed)))] for feed in feeds]


def _compare(expected: list[list[np.ndarray]], got: list[list[np.ndarray]], path: str, batches: tuple[int, ...],
             reference: str = "PyTorch") -> ExportReport:
    worst, same_top1, scale = 0.0, True, 0.0
    for want, have in zip(expected, got, strict=True):
        for e, g in zip(want, have, strict=False):
            worst = max(worst, float(np.max(np.abs(e - g))) if e.size else 0.0)
            scale = max(scale, float(np.max(np.abs(e))) if e.size else 0.0)
            if e.ndim == 2:
                same_top1 &= bool(np.array_equal(e.argmax(1), g.argmax(1)))
    return ExportReport(path, batches, worst, same_top1, scale, reference=reference)


def _onnxruntime_outputs(onnx_path: str, feeds: list[tuple]) -> list[list[np.ndarray]]:
    """onnxruntime's outputs for each feed. Its CPU memory arena is off (an arena keeps its peak for
    the life of the process), and the session, with its copy of the weights, is gone on return."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [session.run(None, {n: x.numpy() for n, x in zip(names, feed, strict=False)}) for feed in feeds]
