"""ONNX export for inference, verified against onnxruntime.

What is exported is the user's own model in eval mode: aux heads and detach nodes live only in the
SplitModule, and RepL surrogates are folded into a copy of the model (the user's own is never changed).
The dynamo exporter has open numerics bugs, so every export is run with onnxruntime at two batch
sizes and compared with eager PyTorch; a file that fails is never left at ``path``. The tolerance is
``atol`` (1e-4) for outputs of magnitude up to 1 and relative beyond: randomly initialised models
produce logits in the hundreds, where fp32 rounding alone exceeds 1e-4 (DLA-34: 1.8e-4 at 482).
"""
from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..base.errors import SplitFXError, first_line
from ..base.files import atomic_path
from ..base.tensors import Inputs, as_tuple
from ..passes.trace import training_mode
from ..runtime.split_module import SplitModule
from .folding import exportable
from .validation import check_export


@dataclass
class ExportReport:
    path: str
    batch_sizes: tuple[int, ...]
    max_abs_diff: float  # over all verified batch sizes and outputs
    top1_equal: bool
    max_abs_output: float = 0.0  # the tolerance is atol × max(1, this): fp32 rounding grows with magnitude
    exporter: str = "dynamo"  # or "torchscript", the fallback

    def __str__(self) -> str:
        return (f"wrote {self.path} ({self.exporter} exporter): "
                f"onnxruntime vs PyTorch at batch sizes {list(self.batch_sizes)}: "
                f"max abs diff {self.max_abs_diff:.2e} (outputs up to {self.max_abs_output:.2e}), "
                f"top-1 {'identical' if self.top1_equal else 'DIFFERENT'}")


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore every module's training and requires_grad flags, and fail loudly if export changed a tensor."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with training_mode(model, False):
            yield
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if changed:
        raise SplitFXError(f"ONNX export changed the model's state ({changed[:3]}); please report this")


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
) -> ExportReport:
    """Export the eval-mode model to ``path`` and (by default) verify it with onnxruntime.

    Accepts a SplitModule (its aux heads dropped; RepL blocks folded into a copy of the model) or any
    ``nn.Module``. Neither is changed: training flags, parameters, buffers and ``requires_grad`` are
    left exactly as they were. A model on another device is exported from a CPU copy."""
    check_export(**locals())
    model = _exportable(model_or_split)
    inputs = tuple(x.cpu() for x in as_tuple(example_inputs))
    if dynamic_batch and inputs[0].shape[0] < 2:
        inputs = tuple(x.expand(2, *x.shape[1:]).contiguous() for x in inputs)  # batch 1 gets specialised
    path = os.fspath(path)
    with _untouched(model), atomic_path(path) as tmp:
        exporter = _export(exportable(model), inputs, tmp, dynamic_batch)
        report = ExportReport(path, (), 0.0, True)
        if verify:
            report = _verify(model, tmp, inputs, dynamic_batch, atol, path)
        report.exporter = exporter
    return report


def _exportable(model_or_split: nn.Module) -> nn.Module:
    """The plain model to export: a SplitModule's own, or, where that would need changing (RepL folded,
    another device), a copy of it."""
    if isinstance(model_or_split, SplitModule):
        if len(model_or_split.repl):
            return copy.deepcopy(model_or_split).materialize().cpu()
        model_or_split = model_or_split.model
    on_cpu = all(t.device.type == "cpu" for t in (*model_or_split.parameters(), *model_or_split.buffers()))
    return model_or_split if on_cpu else copy.deepcopy(model_or_split).cpu()


def _export(model: nn.Module, inputs: tuple, path: str, dynamic_batch: bool) -> str:
    """The dynamo exporter first; where it fails (e.g. its decompositions cannot view a transposed
    tensor with a symbolic batch, as in BEiT and MaxViT), the TorchScript exporter. Returns which."""
    dynamic = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic_batch else None
    try:
        torch.onnx.export(model, inputs, path, dynamo=True, dynamic_shapes=dynamic, external_data=False)
        return "dynamo"
    except Exception as dynamo_err:
        names = [f"input{i}" for i in range(len(inputs))]
        axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
        try:
            torch.onnx.export(model, inputs, path, dynamo=False, input_names=names, dynamic_axes=axes)
            return "torchscript"
        except Exception as err:
            raise SplitFXError(
                f"torch.onnx.export failed for {type(model).__name__}: dynamo: {first_line(dynamo_err)}; "
                f"torchscript: {first_line(err)}"
            ) from err


def _verify(model: nn.Module, onnx_path: str, inputs: tuple, dynamic_batch: bool, atol: float,
            path: str) -> ExportReport:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    batches = (inputs[0].shape[0], inputs[0].shape[0] + 1) if dynamic_batch else (inputs[0].shape[0],)
    generator = torch.Generator().manual_seed(0)
    worst, same_top1, scale = 0.0, True, 0.0
    for batch in batches:
        feed = tuple(torch.randn((batch, *x.shape[1:]), generator=generator, dtype=x.dtype) if x.is_floating_point()
                     else x[:1].expand(batch, *x.shape[1:]) for x in inputs)
        with torch.no_grad():
            expected = _outputs(model(*feed))
        got = session.run(None, {n: x.numpy() for n, x in zip(names, feed, strict=False)})
        for e, g in zip(expected, got, strict=False):
            e = e.float().numpy()
            worst = max(worst, float(np.max(np.abs(e - g))) if e.size else 0.0)
            scale = max(scale, float(np.max(np.abs(e))) if e.size else 0.0)
            if e.ndim == 2:
                same_top1 &= bool(np.array_equal(e.argmax(1), g.argmax(1)))
    report = ExportReport(path, batches, worst, same_top1, scale)
    limit = atol * max(1.0, scale)
    if worst > limit or not same_top1:
        raise SplitFXError(f"ONNX verification failed for {type(model).__name__}: max abs diff {worst:.2e} "
                           f"(limit {limit:.1e} for outputs up to {scale:.1e}), top-1 "
                           f"{'identical' if same_top1 else 'different'}; nothing written")
    return report
