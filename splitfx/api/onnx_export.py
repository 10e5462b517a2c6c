"""ONNX export for inference, verified against onnxruntime.

What is exported is the user's own model in eval mode: aux heads and detach nodes live only in the
SplitModule, and RepL surrogates are folded into a copy of the model (the user's own is never changed).
A recipe whose heads take part in inference (``RecipeTraits.infers``: FFR) is the exception: its
SplitModule's ``forward`` is exported (the blocks, what the recipe hands between them, the heads, and
FFR's prediction and uncertainty) and verified against that forward.
The dynamo exporter has open numerics bugs, so every export is run with onnxruntime at two batch
sizes and compared with eager PyTorch; a file that fails is never left at ``path``. The tolerance is
``atol`` (1e-4) for outputs of magnitude up to 1 and relative beyond: randomly initialised models
produce logits in the hundreds, where fp32 rounding alone exceeds 1e-4 (DLA-34: 1.8e-4 at 482).
Where onnxruntime misses PyTorch's float32 outputs it is compared with PyTorch's float64 ones, the
exact answer; a model whose float32 outputs miss its own float64 ones is reported as ill-conditioned
at its weights (random-init EfficientNetV2-M in eval mode: logits of 2.9e6, float32 off by 2.7e6).
A float16 model is checked the same way one step down (float32 as the exact answer) with a tolerance
of at least 1e-2; a bfloat16 one is refused unless ``verify=False``, as onnxruntime's CPU provider
cannot run it (:mod:`.onnx_verify`).

Weights over 1 GiB are written as ONNX external data, in ``PATH.data`` beside ``PATH`` (one ONNX file
cannot hold more than 2 GiB); both files are written in a temp folder and moved into place together.
Export and verification hold one copy of the weights at a time where they can: the check that the
model is unchanged compares checksums, PyTorch's reference outputs are computed before onnxruntime
loads the file, and the onnxruntime session, without its memory arena, is gone before this returns.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import os
import zlib
from collections.abc import Iterator

import onnx
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base.errors import ArgumentError, SplitFXError, first_line
from ..base.files import atomic_files
from ..base.interrupts import kept_interrupts
from ..base.memory import weight_bytes
from ..base.tensors import Inputs, as_tuple
from ..passes.trace import training_mode
from ..runtime.split_module import SplitModule
from .folding import exportable
from .input_shape import check_example_shape
from .onnx_verify import ExportReport, check_verifiable, verify_export
from .validation import check_export

EXTERNAL_ABOVE = 2**30  # external_data=None: weights of more bytes than this go to PATH.data
ONE_FILE_LIMIT = 2**31  # protobuf's limit: one ONNX file cannot hold more
DATA = ".data"  # the external data file is PATH + DATA


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


def export_onnx(
    model_or_split: nn.Module,
    path: str | os.PathLike,
    example_inputs: Inputs,
    *,
    dynamic_batch: bool = True,
    verify: bool = True,
    verify_on: str = "random",
    atol: float = 1e-4,
    external_data: bool | None = None,
) -> ExportReport:
    """Export the eval-mode model to ``path`` and (by default) verify it with onnxruntime.

    Accepts a SplitModule (its aux heads dropped; RepL blocks folded into a copy of the model) or any
    ``nn.Module``. Neither is changed: training flags, parameters, buffers and ``requires_grad`` are
    left exactly as they were. A model on another device is exported from a CPU copy.
    ``external_data``: True writes the weights to ``PATH.data`` beside ``path`` (ONNX external data),
    False into ``path`` itself (at most 2 GiB), None (default) the former for weights over 1 GiB.
    ``verify_on``: "random" (default) runs onnxruntime and PyTorch on seeded Gaussian noise of the
    example's shape, "example" on the example's own samples (cycled to a second batch size): for
    weights fitted to data like it, where noise may be far outside what they were fitted to."""
    check_export(**locals())
    model = _exportable(model_or_split)
    if verify:
        check_verifiable(model)
    external = _external(model, external_data)
    given = tuple(x.cpu() for x in as_tuple(example_inputs))
    inputs = given
    if dynamic_batch and given[0].shape[0] < 2:
        inputs = tuple(x.expand(2, *x.shape[1:]).contiguous() for x in given)  # batch 1 gets specialised
    path = os.fspath(path)
    with _untouched(model), atomic_files(path) as folder:
        tmp = os.path.join(folder, os.path.basename(path))
        try:
            exporter, fixed = _export(exportable(model), inputs, given, tmp, dynamic_batch, external)
        except SplitFXError as err:
            check_example_shape(model, given, err)
            raise
        if fixed is not None:
            inputs = given  # the file takes the example's own batch size
        report = ExportReport(path, (given[0].shape[0],) if fixed else (), 0.0, True, verified=False)
        if verify:
            report = verify_export(model, tmp, inputs, dynamic_batch and fixed is None, atol, path,
                                   on_example=verify_on == "example", external=external)
        report.exporter, report.fixed_batch = exporter, fixed
        report.data_path = path + DATA if os.path.exists(tmp + DATA) else None
    return report


def _external(model: nn.Module, external_data: bool | None) -> bool:
    """Whether the weights go to ``PATH.data``: as asked, or where they are over :data:`EXTERNAL_ABOVE`."""
    size = weight_bytes(model)
    if external_data is False and size > ONE_FILE_LIMIT:
        raise ArgumentError(f"external_data=False, but the weights are {size / 2**30:.1f} GiB and one ONNX file "
                            "holds at most 2 GiB; pass external_data=True or None")
    return size > EXTERNAL_ABOVE if external_data is None else external_data


def _exportable(model_or_split: nn.Module) -> nn.Module:
    """The plain model to export: a SplitModule's own, or, where that would need changing (RepL folded,
    another device), a copy of it. A SplitModule whose recipe's heads take part in inference
    (``RecipeTraits.infers``: FFR) is exported whole: its ``forward`` runs the blocks and the heads."""
    if isinstance(model_or_split, SplitModule):
        if model_or_split.recipe.traits.infers:
            if len(model_or_split.repl):
                raise ArgumentError(f"recipe {model_or_split.recipe.name!r} predicts with its heads, and RepL "
                                    "surrogates cannot be folded into its blocks: export it without replace=")
        elif len(model_or_split.repl):
            return copy.deepcopy(model_or_split).materialize().cpu()
        else:
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

    ``path`` is in a folder of its own: whatever a failed attempt left there is removed. A Ctrl-C
    during an attempt stops the export (:func:`~splitfx.base.interrupts.kept_interrupts`), even where
    the exporter turned it into an error of its own or dropped it: it is no reason to try another way."""
    try:
        with kept_interrupts():
            return _dynamo(model, inputs, path, dynamic_batch, external), None
    except Exception as dynamo_err:
        _empty(os.path.dirname(path))
        try:
            with kept_interrupts():
                _torchscript(model, inputs, path, dynamic_batch, external)
            return "torchscript", None
        except Exception as err:
            failures = f"dynamo: {first_line(dynamo_err)}; torchscript: {first_line(err)}"
            if not dynamic_batch:
                raise SplitFXError(f"torch.onnx.export failed for {type(model).__name__}: {failures}") from err
        _empty(os.path.dirname(path))
        try:
            with kept_interrupts():
                return _dynamo(model, given, path, False, external), failures
        except Exception as fixed_err:
            raise SplitFXError(f"torch.onnx.export failed for {type(model).__name__}: {failures}; dynamo at a "
                               f"fixed batch: {first_line(fixed_err)}") from fixed_err


def _dynamo(model: nn.Module, inputs: tuple, path: str, dynamic_batch: bool, external: bool) -> str:
    """Export with dynamo and onnxscript's graph optimizer; where the optimized graph is not valid ONNX
    (gemma4_vit's: a ``Clip`` reads a value no node makes; the unoptimized graph is valid), again
    without the optimizer. Returns which."""
    from .onnx_ops import TRANSLATIONS  # onnxscript's torch_lib, only when exporting

    dynamic = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic_batch else None
    if dynamic is not None and _varargs(model):  # forward(*inputs), as SplitModule's: one argument, a tuple
        dynamic = (dynamic,)

    def write(optimize: bool) -> None:
        with sdpa_kernel(SDPBackend.MATH):
            # verbose=False: the exporter's progress lines would otherwise go to the user's stdout
            torch.onnx.export(model, inputs, path, dynamo=True, dynamic_shapes=dynamic, external_data=external,
                              custom_translation_table=TRANSLATIONS, optimize=optimize, verbose=False)

    write(True)
    try:
        onnx.checker.check_model(path)
        return "dynamo"
    except onnx.checker.ValidationError:
        _empty(os.path.dirname(path))
    write(False)
    onnx.checker.check_model(path)
    return "dynamo, unoptimized (the optimized graph was not valid ONNX)"


def _varargs(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes its inputs as ``*args``."""
    params = inspect.signature(model.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


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
