"""``splitfx bench``: E2E vs activation checkpointing vs local training, measured in one process.

Every mode trains the same model on the same batch with the same optimizer:

* ``e2e``: forward, cross-entropy (MSE for a regressor: one value per sample), one backward.
* ``checkpoint``: ``torch.utils.checkpoint`` (``use_reentrant=False``) over the same K segments as
  the plan, so the comparison is at equal granularity; exact gradients, recomputation in backward.
* ``local``: ``SplitModule.train_step`` with the chosen recipe.
* with ``replace``: ``local`` again with RepL, and trainable parameters / optimizer state compared.
* with ``floor``: the same K blocks with no heads, each block's own backward on the mean square of
  what it hands over, the last block's on the task loss: what a step with one backward per block
  costs before any recipe's heads, so ``local`` above it is the heads' and the loss's time.

Memory, two quantities side by side, each predicted by the plan and measured: the peak of live
saved-for-backward bytes (parameters and buffers excluded), which local learning shrinks, and the
whole training step's peak as the allocator sees it (weights, gradients, SGD-momentum state, the
batch, activations, transient buffers: :func:`~.measure.allocator_peak`, the profiler's memory
timeline on CPU, ``max_memory_allocated`` on CUDA), which is what a device runs out of. On CPU also
the growth of the process's peak RSS over its level when the mode started (freed heap is trimmed
and the peak reset between modes through ``/proc/self/clear_refs``).
Time: median over the timed steps after warm-up.
Ratios are to E2E in the same run.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..api.conversion import convert, segments
from ..api.planning import plan as make_plan
from ..base.memory import optimizer_state_bytes
from ..base.meter import SavedTensorMeter, state_keys
from ..passes.trace import trace
from ..recipes import Recipe
from ..recipes.base import handed
from ..runtime.step import run_step
from .measure import allocator_peak

OPTIMIZER = "sgd_momentum"  # what every mode trains with, and what the plans predict for


@dataclass
class ModeResult:
    mode: str
    step_ms: float
    peak_saved_bytes: int
    peak_rss_bytes: int | None = None  # process peak RSS above its level when the mode started
    peak_cuda_bytes: int | None = None
    predicted_saved_bytes: int | None = None
    trainable_params: int | None = None
    optimizer_state_bytes: int | None = None
    step_peak_bytes: int | None = None  # the allocator's peak over one whole training step
    predicted_step_peak_bytes: int | None = None


@dataclass
class BenchResult:
    model: str
    blocks: int
    recipe: str
    batch: int
    input_size: tuple
    device: str
    steps: int
    aux_flops_share: float  # aux-head FLOPs / backbone FLOPs
    modes: list[ModeResult] = field(default_factory=list)

    def ratio(self, mode: ModeResult, attr: str) -> float | None:
        base, value = getattr(self.modes[0], attr), getattr(mode, attr)
        return value / base if base and value is not None else None

    def table(self) -> str:
        cuda = self.device.startswith("cuda")
        head = (f"{self.model}, K={self.blocks}, recipe {self.recipe!r}, batch {self.batch}, "
                f"input {'×'.join(map(str, self.input_size))}, {self.device}, median of {self.steps} steps")
        cols = ["mode", "step ms", "×E2E", "saved act. MiB", "×E2E", "predicted MiB", "step peak MiB", "×E2E",
                "predicted MiB"]
        cols += ["CUDA peak MiB", "×E2E"] if cuda else ["RSS growth MiB", "×E2E"]
        rows = [cols]
        for m in self.modes:
            mem = m.peak_cuda_bytes if cuda else m.peak_rss_bytes
            attr = "peak_cuda_bytes" if cuda else "peak_rss_bytes"
            rows.append([
                m.mode, f"{m.step_ms:.1f}", _x(self.ratio(m, "step_ms")),
                f"{m.peak_saved_bytes / 2**20:.1f}", _x(self.ratio(m, "peak_saved_bytes")),
                f"{m.predicted_saved_bytes / 2**20:.1f}" if m.predicted_saved_bytes else "–",
                f"{m.step_peak_bytes / 2**20:.1f}" if m.step_peak_bytes else "–", _x(self.ratio(m, "step_peak_bytes")),
                f"{m.predicted_step_peak_bytes / 2**20:.1f}" if m.predicted_step_peak_bytes else "–",
                f"{mem / 2**20:.0f}" if mem else "–", _x(self.ratio(m, attr)),
            ])
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        lines = [head] + ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(f"aux-head FLOPs: {100 * self.aux_flops_share:.2f} % of the backbone's")
        for m in self.modes:
            if m.trainable_params is not None:
                lines.append(f"{m.mode}: {m.trainable_params / 1e6:.2f}M trainable parameters, "
                             f"{m.optimizer_state_bytes / 2**20:.1f} MiB optimizer state")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _x(r: float | None) -> str:
    return f"{r:.2f}" if r is not None else "–"


def _reset_rss() -> None:
    """Give freed heap back to the OS, then restart the peak-RSS counter (Linux)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM)
    except OSError:
        pass


def _status(field: str) -> int | None:
    """A byte count from /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _measure(name: str, step: Callable[[], None], module: nn.Module, device: str, warmup: int,
             steps: int) -> ModeResult:
    for _ in range(warmup):
        step()
    _sync(device)
    _reset_rss()
    rss_start = _status("VmRSS")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with SavedTensorMeter(state_keys([module])) as meter:
        for _ in range(steps):
            began = time.perf_counter()
            step()
            _sync(device)
            times.append(1000 * (time.perf_counter() - began))
    peak = _status("VmHWM")
    cuda = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return ModeResult(name, statistics.median(times), meter.peak, peak - rss_start if peak and rss_start else None,
                      cuda, step_peak_bytes=allocator_peak(step, torch.device(device)))


def run(
    model_factory: Callable[[], nn.Module],
    model_name: str,
    num_blocks: int = 4,
    *,
    recipe: str | Recipe = "linear",
    batch: int = 8,
    input_size: Sequence[int] = (3, 224, 224),
    device: str = "cpu",
    steps: int = 10,
    warmup: int = 2,
    replace: int | Sequence[str] | None = None,
    channels_last: bool = False,
    amp: bool = False,
    floor: bool = False,
) -> BenchResult:
    """Benchmark one model; ``model_factory`` builds a fresh copy for each mode."""
    torch.manual_seed(0)
    x = torch.randn(batch, *input_size, device=device)
    memory_format = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    dtype = (torch.bfloat16 if amp else None)

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return model_factory().to(device, memory_format=memory_format).train()

    model = fresh()
    out = model(x[:2])
    if out.dim() == 1 or out.shape[-1] == 1:  # one value per sample: a regressor, trained with MSE
        y, loss_fn = torch.randn(batch, *out.shape[1:], device=device), F.mse_loss
    else:
        y, loss_fn = torch.randint(0, out.shape[-1], (batch,), device=device), F.cross_entropy
    plan = make_plan(model, x, num_blocks, recipe=recipe, optimizer=OPTIMIZER, example_target=y)
    flops = sum(b.flops for b in plan.blocks)
    label = recipe if isinstance(recipe, str) else repr(recipe)  # a recipe made with options shows them
    result = BenchResult(model_name, plan.num_blocks, label, batch, tuple(input_size), device, steps,
                         sum(b.aux_flops for b in plan.blocks) / max(flops, 1))

    def sgd(params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)  # OPTIMIZER, as the plans predict

    opt = sgd(model.parameters())

    def e2e_loss():
        yield loss_fn(model(x), y)

    def e2e_step():
        run_step(e2e_loss(), opt, x.device, autocast_dtype=dtype)

    e2e = _measure("e2e", e2e_step, model, device, warmup, steps)
    e2e.predicted_saved_bytes = plan.e2e_saved_bytes
    e2e.predicted_step_peak_bytes = plan.e2e_step_peak_bytes or None
    result.modes.append(e2e)

    model = fresh()
    plan = make_plan(model, x, num_blocks, recipe=recipe, example_target=y)
    parts = segments(plan, detach=False)
    opt = sgd(model.parameters())

    def checkpointed_loss():
        h = (x,)
        for part in parts[:-1]:  # a cut may hand over several tensors: a tuple
            out = checkpoint(part, *h, use_reentrant=False)
            h = out if isinstance(out, tuple) else (out,)
        yield loss_fn(parts[-1](*h), y)

    def checkpoint_step():
        run_step(checkpointed_loss(), opt, x.device, autocast_dtype=dtype)

    result.modes.append(_measure("checkpoint", checkpoint_step, model, device, warmup, steps))

    for label, repl in [("local", None), ("local+RepL", replace)] if replace is not None else [("local", None)]:
        model = fresh()
        sm = convert(model, x, num_blocks, recipe=recipe, replace=repl, optimizer=OPTIMIZER, example_target=y)
        opt = sgd(p for p in sm.parameters() if p.requires_grad)
        mode = _measure(label, lambda sm=sm, opt=opt: sm.train_step(x, y, opt, None, dtype), sm, device, warmup, steps)
        mode.predicted_saved_bytes = sm.plan.local_peak_bytes
        mode.predicted_step_peak_bytes = sm.plan.step_peak_bytes or None
        if replace is not None:
            # the plan's count leaves out what the forward never uses: no loss trains it
            mode.trainable_params = sm.plan.trainable_params + sum(p.numel() for p in sm.heads.parameters()
                                                                   if p.requires_grad)
            mode.optimizer_state_bytes = optimizer_state_bytes(opt)
        result.modes.append(mode)
    if floor:
        model = fresh()
        parts = segments(make_plan(model, x, num_blocks, recipe=recipe, example_target=y))
        opt = sgd(model.parameters())

        def floor_loss():
            h = (x,)
            for part in parts[:-1]:
                out = handed(part(*h))
                yield sum(t.float().square().mean() for t in out if t.is_floating_point())
                h = tuple(t.detach() for t in out)
            yield loss_fn(parts[-1](*h), y)

        result.modes.append(_measure("floor", lambda: run_step(floor_loss(), opt, x.device, autocast_dtype=dtype),
                                     model, device, warmup, steps))
    return result


@dataclass
class ConversionTime:
    model: str
    nodes: int
    params: int
    trace_s: float
    plan_s: float  # trace + cost probe + cuts + partition
    convert_s: float  # plan + emitting blocks and heads


def conversion_time(model: nn.Module, name: str, x: torch.Tensor, num_blocks: int = 4) -> ConversionTime:
    """Wall time of trace alone, of plan (which traces), and of convert (which plans)."""
    began = time.perf_counter()
    gm = trace(model, (x,))
    traced = time.perf_counter()
    make_plan(model, x, num_blocks)
    planned = time.perf_counter()
    convert(model, x, num_blocks)
    converted = time.perf_counter()
    return ConversionTime(name, len(gm.graph.nodes), sum(p.numel() for p in model.parameters()),
                          traced - began, planned - traced, converted - planned)
