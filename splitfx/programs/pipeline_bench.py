"""``torchrun --nproc-per-node S -m splitfx bench MODEL --stages S``: the pipeline against one process
(one thread, and as many threads as ranks) and against ``torch.distributed.pipelining``, on the same
batches, one thread per rank.

The K blocks are grouped into S stages by their training times, measured on rank 0 and sent to
every rank (``stage_balance="time"``), or by predicted FLOPs (``"flops"``); every mode trains the
same stages. Modes, each timed over the same ``steps`` batches after ``warmup`` untimed ones:

* ``one process``: rank 0 alone runs ``SplitModule.train_step`` over all K blocks (the others wait),
  once with one thread (the ×one column's base) and once with S threads: the cores the pipeline's
  ranks use, given to one process instead.
* ``pipeline``: S ranks, each its stage's blocks (:mod:`splitfx.runtime.rank`); no gradient
  goes back, so batches stream through without a flush. Timed in steady state: the warm-up steps
  fill the pipeline, and samples/s is the timed samples over the last rank's time for them, from
  the end of its last warm-up step to the end of its last step: the rate at which trained batches
  leave a full pipeline (an epoch pays the fill and the drain once, not at every step).
* ``GPipe`` / ``1F1B``: the same S stages trained end to end with ``torch.distributed.pipelining``
  (one loss on the last stage, gradients sent back, each batch split into micro-batches).

Memory per rank is what training holds: parameters, optimizer state (AdamW everywhere) and the peak
of saved activations (the same meter as ``splitfx bench``); a rank keeps only its stage's tensors.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..api.conversion import convert, segments
from ..api.planning import plan as make_plan
from ..api.validation import STAGE_BALANCES
from ..base.errors import DistributedError
from ..base.memory import optimizer_state_bytes, weight_bytes
from ..base.meter import SavedTensorMeter, state_keys
from ..base.sizes import nbytes
from ..base.stage_plan import StageBalance
from ..recipes import Recipe
from ..runtime import grid as grids
from ..runtime.pipeline import Stage, check_pipeline
from ..runtime.placement import block_tensors, place
from ..runtime.rank import Rank
from ..runtime.schedules import PipelineSchedule, Streaming
from ..runtime.split_module import SplitModule
from .distributed import balance_by_time
from .models import create_model


@dataclass
class Memory:
    params: int
    optimizer: int
    saved: int

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.saved


@dataclass
class Mode:
    name: str
    ranks: int
    samples_per_s: float
    memory: list[Memory]  # per rank

    @property
    def largest(self) -> Memory:
        return max(self.memory, key=lambda m: m.total)


@dataclass
class PipelineBench:
    model: str
    blocks: int
    method: str
    stages: int
    recipe: str
    batch: int
    input_size: tuple
    steps: int
    microbatches: int
    ranges: list
    shares: list
    stage_balance: str = "time"
    modes: list[Mode] = field(default_factory=list)

    def table(self) -> str:
        base = self.modes[0]
        clock = "measured" if self.stage_balance == StageBalance.TIME else "predicted"
        head = (f"{self.model}, K={self.blocks} by {self.method}, recipe {self.recipe!r}, batch {self.batch}, input "
                f"{'×'.join(map(str, self.input_size))}, CPU, one thread per rank, {self.steps} timed steps "
                "(the pipeline in steady state); stages "
                + ", ".join(f"{s}: blocks {a}–{b - 1} ({100 * share:.0f} % of {clock} time)"
                            for s, ((a, b), share) in enumerate(zip(self.ranges, self.shares, strict=True))))
        rows = [["mode", "ranks", "samples/s", "×one", "params", "optimizer", "saved act.", "largest rank", "×one"]]
        for m in self.modes:
            big = m.largest
            rows.append([m.name, str(m.ranks), f"{m.samples_per_s:.2f}", f"{m.samples_per_s / base.samples_per_s:.2f}",
                         nbytes(big.params), nbytes(big.optimizer), nbytes(big.saved), nbytes(big.total),
                         f"{big.total / base.largest.total:.2f}"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in
                                    enumerate(zip(r, widths, strict=True))) for r in rows]
        lines.append("memory columns: the rank with the most (parameters + optimizer state + saved activations); "
                     "per rank: " + "; ".join(f"{m.name}: " + ", ".join(nbytes(r.total) for r in m.memory)
                                              for m in self.modes if m.ranks > 1))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PipelineBench:
        """The benchmark :meth:`to_dict` (or ``bench --stages --json``, whose provenance is ignored) gave."""
        modes = [Mode(m["name"], m["ranks"], m["samples_per_s"], [Memory(**r) for r in m["memory"]])
                 for m in d["modes"]]
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name != "modes" and f.name in d}, modes=modes)


class _Segments(nn.Module):
    """Consecutive blocks without input detach, as one module (a ``torch.distributed.pipelining`` stage)."""

    def __init__(self, parts: list, model: nn.Module):
        super().__init__()
        self.model = model
        object.__setattr__(self, "parts", parts)

    def forward(self, *h):
        for part in self.parts:
            out = part(*h)
            h = out if isinstance(out, tuple) else (out,)
        return out


def _timed(grid: grids.Grid, step: Callable[[int], None], data: list, warmup: int, module: nn.Module,
           flush: Callable[[], None], steady: bool = False) -> tuple[float, int]:
    """Seconds for the timed steps and this rank's saved peak. By default every rank starts the timed
    steps together and the clock stops when the last rank ends them (barriers around them). With
    ``steady`` the warm-up steps fill the pipeline and it stays full: each rank times its own steps,
    from the end of its last warm-up step to the end of its last step, as an epoch runs between its
    one fill and one drain (the last rank's time is the pipeline's: trained batches leave it there)."""
    for t in range(warmup):
        step(t)
    if not steady:
        flush()
        grids.barrier(grid)
    with SavedTensorMeter(state_keys([module])) as meter:
        began = time.perf_counter()
        for t in range(warmup, len(data)):
            step(t)
        flush()
        if not steady:
            grids.barrier(grid)
        seconds = time.perf_counter() - began
    grids.barrier(grid)
    return seconds, meter.peak


def _staged(grid: grids.Grid, name: str, data: list, blocks: int, recipe: str, method: str,
            stage_balance: str) -> SplitModule:
    """The model converted, its stages balanced by ``stage_balance``, the same on every rank."""
    sm = convert(_fresh(name), data[0][0], blocks, recipe=recipe, method=method, stages=grid.stages)
    if stage_balance == StageBalance.TIME:
        balance_by_time(grid, sm, data[0])
    grids.agree(grid, grids.digest(sm.plan.stages.to_dict()), "the stage plan")
    return sm


def _local(grid: grids.Grid, sm: SplitModule, data: list, warmup: int,
           schedule: PipelineSchedule) -> tuple[float, Memory]:
    ranges = sm.plan.stages.ranges
    check_pipeline(sm, ranges)
    stage = Stage(sm, *ranges[grid.stage])
    stage.place("cpu")
    params = [p for _, p in stage.named_parameters()]
    me = Rank(grid, stage, torch.optim.AdamW(params, lr=1e-4), schedule=schedule)
    seconds, peak = _timed(grid, lambda t: me.train_step(t, data[t] if grid.stage == 0 else None), data, warmup, sm,
                           me.link.flush, steady=True)
    me.close()
    return seconds, Memory(weight_bytes(params), optimizer_state_bytes(me.optimizer), peak)


def _one(name: str, data: list, blocks: int, recipe: str, method: str, warmup: int) -> tuple[float, Memory]:
    sm = convert(_fresh(name), data[0][0], blocks, recipe=recipe, method=method)
    opt = torch.optim.AdamW(sm.parameters(), lr=1e-4)
    for x, y in data[:warmup]:
        sm.train_step(x, y, opt)
    with SavedTensorMeter(state_keys([sm])) as meter:
        began = time.perf_counter()
        for x, y in data[warmup:]:
            sm.train_step(x, y, opt)
        seconds = time.perf_counter() - began
    return seconds, Memory(weight_bytes(sm.parameters()), optimizer_state_bytes(opt), meter.peak)


def _e2e(grid: grids.Grid, name: str, data: list, blocks: int, method: str, ranges: list, schedule: str,
         microbatches: int, warmup: int) -> tuple[float, Memory]:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    model = _fresh(name)
    planned = make_plan(model, data[0][0], blocks, method=method)
    a, b = ranges[grid.stage]
    parts = segments(planned, detach=False)[a:b]
    module = _Segments(parts, model)
    place(module, [t for part in parts for t in block_tensors(part)], "cpu")
    params = [p for p in module.parameters() if p.device.type != "meta"]
    opt = torch.optim.AdamW(params, lr=1e-4)
    stage = PipelineStage(module, grid.stage, grid.stages, torch.device("cpu"))
    run = {"GPipe": ScheduleGPipe, "1F1B": Schedule1F1B}[schedule](stage, microbatches, loss_fn=F.cross_entropy)

    def step(t: int) -> None:
        opt.zero_grad(set_to_none=True)
        x, y = data[t]
        if grid.stage == 0:
            run.step(x)
        elif grid.next is None:
            run.step(target=y)
        else:
            run.step()
        opt.step()

    seconds, peak = _timed(grid, step, data, warmup, module, lambda: None)
    return seconds, Memory(weight_bytes(params), optimizer_state_bytes(opt), peak)


def _fresh(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name).train()


def _gather(grid: grids.Grid, value) -> list:
    every: list = [None] * grid.world
    try:
        dist.all_gather_object(every, value)
    except RuntimeError as err:
        raise DistributedError(f"rank {grid.rank}: a rank stopped during the benchmark: {err}") from err
    return every


def run(name: str, stages: int, *, blocks: int | None = None, recipe: str | Recipe = "linear", method: str = "flops",
        batch: int = 8,
        input_size: tuple = (3, 224, 224), steps: int = 10, warmup: int = 2, microbatches: int | None = None,
        timeout: float = 600.0, stage_balance: str = "time",
        schedule: PipelineSchedule | None = None) -> PipelineBench | None:
    """Benchmark ``name`` on this rank of an S-rank torchrun launch; rank 0 returns the table. Blocks
    are balanced by ``method`` and grouped into stages by ``stage_balance`` (a pipeline runs at its
    slowest rank's pace), the same blocks and stages in every mode. ``blocks`` defaults to
    8S: a stage can only be as even as its blocks, and with eight blocks per stage the balance
    is within about one block's time (docs/benchmarks.md, "Pipeline across processes").
    ``schedule`` orders the local pipeline's work (default: the whole batch at once)."""
    if stage_balance not in STAGE_BALANCES:
        raise DistributedError(f"stage_balance must be one of {', '.join(STAGE_BALANCES)}, got {stage_balance!r}")
    blocks = blocks or 8 * stages
    microbatches = microbatches or 2 * stages
    if batch < 2 * microbatches:  # a micro-batch of one sample fails in BatchNorm's training mode
        raise DistributedError(f"bench --stages {stages} splits each batch into {microbatches} micro-batches for "
                               f"GPipe and 1F1B, each needing 2 samples or more: give --batch {2 * microbatches} or "
                               f"more (got {batch})")
    torch.set_num_threads(1)
    grid = grids.start(stages, "cpu", timeout)
    if grid.replicas != 1:
        raise DistributedError(f"bench --stages {stages} compares one pipeline: launch exactly {stages} processes")
    g = torch.Generator().manual_seed(0)
    classes = getattr(_fresh(name), "num_classes", 1000)
    data = [(torch.randn(batch, *input_size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(warmup + steps)]
    samples = batch * steps
    # Rank 0 alone, the others waiting at a barrier after each run (each within --timeout): their cores
    # are free for one process's threads.
    one = _one(name, data, blocks, recipe, method, warmup) if grid.rank == 0 else None
    grids.barrier(grid)
    torch.set_num_threads(stages)  # one process given the cores the pipeline's ranks use
    wide = _one(name, data, blocks, recipe, method, warmup) if grid.rank == 0 else None
    torch.set_num_threads(1)
    grids.barrier(grid)
    sm = _staged(grid, name, data, blocks, recipe, method, stage_balance)
    shape = sm.plan.stages
    local = _gather(grid, _local(grid, sm, data, warmup, schedule or Streaming()))
    e2e = {s: _gather(grid, _e2e(grid, name, data, blocks, method, shape.ranges, s, microbatches, warmup))
           for s in ("GPipe", "1F1B")}
    grids.finish(grid)
    if grid.rank != 0:
        return None
    label = recipe if isinstance(recipe, str) else recipe.name
    result = PipelineBench(name, blocks, method, stages, label, batch, tuple(input_size), steps, microbatches,
                           [list(r) for r in shape.ranges], shape.shares, stage_balance)
    result.modes.append(Mode(f"one process, local K={blocks}", 1, samples / one[0], [one[1]]))
    result.modes.append(Mode(f"one process, {stages} threads", 1, samples / wide[0], [wide[1]]))
    result.modes.append(Mode("splitfx pipeline, local", stages, samples / local[-1][0], [m for _, m in local]))
    for s, figures in e2e.items():
        result.modes.append(Mode(f"pipelining {s}, E2E, {microbatches} micro-batches", stages,
                                 samples / max(t for t, _ in figures), [m for _, m in figures]))
    return result
