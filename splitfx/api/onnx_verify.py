"""Verification of an exported ONNX file against PyTorch, and the report export returns.

The file runs in onnxruntime on seeded random inputs and is compared with eager PyTorch's outputs in
the model's own dtype; where those disagree, with a more precise copy's (float64 for a float32 model,
float32 for a float16 one: the exact answer at that tolerance), so an export that is more accurate
than PyTorch's own is not refused, and a model whose outputs are not reproducible at its weights is
named ill-conditioned rather than blamed on the exporter. A float16 model is held to its own rounding:
a tolerance of at least :data:`FLOAT16_ATOL` × max(1, max |output|) (float16 keeps 11 significant bits,
a relative step of 1e-3 per operation, which a network accumulates), and a top-1 pick counts as the
same where the reference scores it within that tolerance of its own top. bfloat16 is refused before
export (:func:`check_verifiable`): onnxruntime's CPU provider has no bfloat16 kernels, not even ``Relu``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..base.errors import ArgumentError, SplitFXError
from ..base.memory import weight_bytes

FLOAT64_UP_TO = 2**30  # the precise reference copy (twice these bytes) is made for weights up to this, and beyond
# it where the copy takes at most half the memory the OS reports available (gemma4_vit_570m: 2.3 GB of weights)
FLOAT16_ATOL = 1e-2  # the least tolerance for a float16 model, relative beyond outputs of magnitude 1
PRECISE = {torch.float16: torch.float32, torch.float32: torch.float64, torch.float64: torch.float64}


@dataclass
class ExportReport:
    path: str
    batch_sizes: tuple[int, ...]
    max_abs_diff: float  # over all verified batch sizes and outputs
    top1_equal: bool
    max_abs_output: float = 0.0  # the tolerance is atol × max(1, this): fp32 rounding grows with magnitude
    exporter: str = "dynamo"  # or "dynamo, unoptimized (...)", or "torchscript": the fallbacks
    data_path: str | None = None  # PATH.data, where the weights were written as external data
    reference: str = "PyTorch"  # or "PyTorch float64" ("float32" for a float16 model), where onnxruntime matched
    # the exact outputs instead
    fixed_batch: str | None = None  # why the batch is fixed (the example's) where a dynamic one was asked for
    verified: bool = True  # False: export_onnx(..., verify=False), and nothing was compared

    def within(self, atol: float) -> bool:
        """Whether the outputs agree within ``atol × max(1, max |output|)`` with the same top-1."""
        return self.max_abs_diff <= atol * max(1.0, self.max_abs_output) and self.top1_equal

    def __str__(self) -> str:
        weights = f" and its weights {self.data_path}" if self.data_path else ""
        check = "not verified (verify=False)"
        if self.verified:
            check = (f"onnxruntime vs {self.reference} at batch sizes {list(self.batch_sizes)}: max abs diff "
                     f"{self.max_abs_diff:.2e} (outputs up to {self.max_abs_output:.2e}), top-1 "
                     f"{'identical' if self.top1_equal else 'DIFFERENT'}")
        return (f"wrote {self.path}{weights} (exporter: {self.exporter}): {check}"
                + (f"; the batch is fixed at {self.batch_sizes[0]}, as no exporter gave a dynamic one "
                   f"({self.fixed_batch})" if self.fixed_batch else ""))


def _outputs(value) -> list[torch.Tensor]:
    """Every tensor of an output structure (a tensor, tuple, list or dict, nested), in the order the
    exporters flatten it (torch's pytree order: a dict's values, not its keys)."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter or buffer (float32 where it has none)."""
    return next((t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), torch.float32)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_verifiable(model: nn.Module) -> None:
    """Refuse, before export, a model whose file onnxruntime's CPU provider could not run to verify it."""
    dtype = floating_dtype(model)
    if dtype not in PRECISE:
        name = _name(dtype)
        raise ArgumentError(f"model_or_split has {name} weights, and onnxruntime's CPU provider has no {name} "
                            f"kernels (not even Relu), so the exported file could not be verified: export a float32 "
                            f"copy (copy.deepcopy(model).float()) or a float16 one (.half()), or pass verify=False "
                            f"to write the {name} file unverified")


def verify_export(model: nn.Module, onnx_path: str, inputs: tuple, dynamic_batch: bool, atol: float,
                  path: str, on_example: bool = False, external: bool = False) -> ExportReport:
    """onnxruntime against PyTorch's outputs in the model's own dtype, and where those disagree, against
    a more precise copy's (:data:`PRECISE`): the exact answer, which the exported graph may match more
    closely than PyTorch's own (onnxruntime folds BatchNorm into the convolution, so it skips the
    cancellation of ``conv(x) − running_mean`` when both are large). A float16 model's tolerance is at
    least :data:`FLOAT16_ATOL`. The inputs are seeded Gaussian noise of the example's shape, or with
    ``on_example`` the example itself (see :func:`_example_feeds`). ``external``: the weights are in
    external data, which onnxruntime then reads in place (see :func:`_onnxruntime_outputs`)."""
    own = floating_dtype(model)
    precise, names = PRECISE[own], (_name(own), _name(PRECISE[own]))
    if own == torch.float16:
        atol = max(atol, FLOAT16_ATOL)
    ties = atol if own == torch.float16 else 0.0
    batches = (inputs[0].shape[0], inputs[0].shape[0] + 1) if dynamic_batch else (inputs[0].shape[0],)
    feeds = (_example_feeds if on_example else _random_feeds)(inputs, batches)
    expected = _torch_outputs(model, feeds)
    got = _onnxruntime_outputs(onnx_path, feeds, external)
    report = _compare(expected, got, path, batches, ties=ties)
    if report.within(atol):
        return report
    limit = atol * max(1.0, report.max_abs_output)
    message = (f"ONNX verification failed for {type(model).__name__} ({names[0]}): max abs diff "
               f"{report.max_abs_diff:.2e} (limit {limit:.1e} for outputs up to {report.max_abs_output:.1e}), top-1 "
               f"{'identical' if report.top1_equal else 'different'}")
    exact = _precise_outputs(model, feeds, precise)
    if exact is None:
        raise SplitFXError(message + f" (no {names[1]} reference: the weights are over 1 GiB and their {names[1]} "
                           "copy would take over half the available memory, or they do not run in "
                           f"{names[1]}); nothing written")
    against_exact = _compare(exact, got, path, batches, reference=f"PyTorch {names[1]}", ties=ties)
    if against_exact.within(atol):
        return against_exact
    own_error = _compare(exact, expected, path, batches, ties=ties)
    if not own_error.within(atol):
        top1 = "identical" if own_error.top1_equal else "different"
        message += (f". The model is ill-conditioned at these weights: PyTorch's own {names[0]} outputs differ "
                    f"from its {names[1]} ones by {own_error.max_abs_diff:.2e} (top-1 {top1}), so no {names[0]} "
                    "runtime can be checked against them; verify with trained weights (or calibrated BatchNorm "
                    "statistics), on inputs like those they were fitted to (verify_on='example'), or pass "
                    "verify=False")
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


def _precise_outputs(model: nn.Module, feeds: list[tuple], dtype: torch.dtype) -> list[list[np.ndarray]] | None:
    """PyTorch's outputs from a copy of ``model`` in ``dtype`` (twice its precision); None where the
    weights are over :data:`FLOAT64_UP_TO` bytes and the copy (twice that) would take more than half
    the available memory, or where the copy cannot run."""
    size = weight_bytes(model)
    if size > FLOAT64_UP_TO and 2 * size > available_memory() // 2:
        return None
    try:
        return _torch_outputs(copy.deepcopy(model).to(dtype), feeds, dtype)
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
    dtype = dtype or floating_dtype(model)
    with torch.no_grad():
        return [[e.double().numpy() for e in _outputs(model(*(x.to(dtype) if x.is_floating_point() else x
                                                              for x in feed)))] for feed in feeds]


def _compare(expected: list[list[np.ndarray]], got: list[list[np.ndarray]], path: str, batches: tuple[int, ...],
             reference: str = "PyTorch", ties: float = 0.0) -> ExportReport:
    """The largest difference over every output of every feed, and whether the top-1 picks agree: an
    ONNX pick the reference scores within ``ties × max(1, max |output|)`` of its own top counts as the
    same (0: only the reference's top itself). The largest output is over finite values: an infinite
    one would make any difference fit the tolerance."""
    pairs = []
    for want, have in zip(expected, got, strict=True):
        if not want:
            raise SplitFXError("ONNX verification compared nothing: the model's output holds no tensor; nothing "
                               "written")
        if len(want) != len(have) or any(e.shape != g.shape for e, g in zip(want, have, strict=False)):
            raise SplitFXError(f"ONNX verification failed: {reference} gives {len(want)} output tensor(s) of shapes "
                               f"{[e.shape for e in want]}, the ONNX file {len(have)} of shapes "
                               f"{[g.shape for g in have]}; nothing written")
        pairs += [(e, g.astype(np.float64)) for e, g in zip(want, have, strict=True) if e.size]
    scale = max((float(np.abs(e[np.isfinite(e)]).max(initial=0.0)) for e, _ in pairs), default=0.0)
    worst = max((_max_abs_diff(e, g) for e, g in pairs), default=0.0)
    margin = ties * max(1.0, scale)
    same_top1 = all(_same_top1(e, g, margin) for e, g in pairs if e.ndim == 2)
    return ExportReport(path, batches, worst, same_top1, scale, reference=reference)


def _max_abs_diff(e: np.ndarray, g: np.ndarray) -> float:
    """max |e − g|, where a NaN or infinity on one side only is an infinite difference."""
    with np.errstate(invalid="ignore"):  # inf − inf: NaN, settled on the next line
        diff = np.abs(e - g)
    diff[(e == g) | (np.isnan(e) & np.isnan(g))] = 0.0
    return float(np.nan_to_num(diff, nan=np.inf).max())


def _same_top1(e: np.ndarray, g: np.ndarray, margin: float) -> bool:
    """Whether every row's ONNX top-1 scores, in the reference ``e``, within ``margin`` of the row's top."""
    picked = e[np.arange(len(e)), g.argmax(1)]
    return bool(np.all(picked >= e.max(1) - margin))


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
