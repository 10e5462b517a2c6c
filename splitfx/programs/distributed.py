"""``torchrun … -m splitfx train --stages S``: local training as a pipeline × data-parallel grid.

The world is S stages × R replicas (:mod:`splitfx.runtime.grid`). Every rank plans and converts the
same model, groups the blocks into stages by the block times rank 0 measured (or by predicted FLOPs;
the plan's fingerprint, stages included, is compared before training), keeps only its stage's blocks and
aux heads, and trains them with its own AdamW (:mod:`splitfx.runtime.rank`). Each global batch
is split into R shards, one per replica; the data order, the learning-rate decay and the checkpoint
(:mod:`.gather`, the one-process format) are those of ``splitfx train``, so with one replica the
weights equal one process's bit for bit on CPU, and any run resumes on any world size.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..api.staging import cut_positions, plan_by_time
from ..api.timing import measure_block_times, rebalance_stages
from ..api.validation import STAGE_BALANCES
from ..base.errors import DistributedError
from ..base.meter import SavedTensorMeter, state_keys
from ..base.stage_plan import StageBalance
from ..base.version import __version__
from ..recipes import Recipe
from ..runtime import grid as grids
from ..runtime.pipeline import Stage, check_pipeline
from ..runtime.rank import Rank
from ..runtime.schedules import PipelineSchedule, Streaming
from ..runtime.split_module import SplitModule
from ..runtime.transport import wait
from .checkpoint import Checkpoint
from .config import RESUMABLE, TrainConfig, resolve_device, with_cuts_of
from .epochs import amp_dtype, batch, epoch_order, make_optimizer, start
from .gather import gather_checkpoint, stage_optimizer_state
from .run_folder import CHECKPOINT, write_metrics
from .train import EpochResult, TrainResult, convert_for, epoch_result, open_resume, record_epoch, run_recipe

OnStep = Callable[[int, int], None]
STEPS_PER_EPOCH = 1_000_000  # message tags: epoch · this + step (training), negative for evaluation


def _reduce(grid: grids.Grid, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=grid.device)
    wait(dist.all_reduce(t, op=op, async_op=True), grid.timeout, f"rank {grid.rank}: a rank stopped at the end "
         "of the epoch")
    return t.tolist()


def _shards(idx: torch.Tensor, grid: grids.Grid) -> torch.Tensor | None:
    """This replica's part of a global batch (None for a batch smaller than the replicas: skipped)."""
    return idx.tensor_split(grid.replicas)[grid.replica] if len(idx) >= grid.replicas else None


def _evaluate(me: Rank, test_set, batch_size: int, epoch: int) -> float:
    """Accuracy on ``test_set`` (the monitored split) through the pipeline: each replica takes a share."""
    me.stage.sm.eval()
    order = torch.arange(len(test_set))
    correct = 0
    for t, idx in enumerate(order[i:i + batch_size] for i in range(0, len(order), batch_size)):
        shard = _shards(idx, me.grid)
        if shard is None or not len(shard):
            continue
        data = tuple(x.to(me.grid.device) for x in batch(test_set, shard)) if me.grid.stage == 0 else None
        correct += me.eval_step(-(epoch * STEPS_PER_EPOCH + t + 1), data)
    me.link.flush()
    return _reduce(me.grid, [correct])[0] / len(test_set)


def _fingerprint(sm, config: TrainConfig, grid: grids.Grid) -> int:
    trained = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in RESUMABLE}
    return grids.digest(__version__, torch.__version__, sm.plan.to_dict(), trained, grid.stages, grid.world)


def _epoch(me: Rank, train_set, config: TrainConfig, epoch: int, progress: bool, on_step: OnStep | None):
    """One epoch of this rank; its per-block loss sums, the batches and its peak saved bytes."""
    grid, stage = me.grid, me.stage
    stage.sm.train()
    pieces = grid.replicas * me.schedule.passes
    batches = [s for s in (_shards(b, grid) for b in epoch_order(config, epoch, len(train_set), pieces))
               if s is not None]
    sums = torch.zeros(len(stage.blocks), dtype=torch.float64)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=None if progress and grid.rank == 0 else True)
    with SavedTensorMeter(state_keys([stage.sm])) as meter:
        for t, idx in enumerate(bar):
            data = tuple(x.to(grid.device) for x in batch(train_set, idx)) if grid.stage == 0 else None
            sums += torch.tensor(me.train_step(epoch * STEPS_PER_EPOCH + t, data), dtype=torch.float64)
            if on_step is not None:
                on_step(epoch, t)
        me.link.flush()
    return sums, len(batches), meter.peak


def placed_cuts(grid: grids.Grid, config: TrainConfig, recipe: Recipe, model: nn.Module, example: torch.Tensor,
                autocast_dtype: torch.dtype | None = None) -> tuple[int, ...]:
    """Where ``config.blocks`` blocks of ``recipe`` end when the pipeline's stages are placed first, at equal time
    (:mod:`splitfx.api.staging`): rank 0 times finer blocks and sends the times to every rank, which
    all plan alike. The random-number state is left as it was, so the run starts as one process
    given these cuts does."""
    def timer(finer: SplitModule) -> list[float]:
        times = [0.0] * finer.num_blocks
        if grid.rank == 0:  # timed on the run's device, then back where the model was planned
            times = measure_block_times(finer.to(grid.device), example.to(grid.device), autocast_dtype=autocast_dtype)
            finer.to(example.device)
        return grids.from_first(grid, times, "rank 0 measured the finer blocks' times")

    options = dict(recipe=recipe, max_cut_tensors=config.max_cut_tensors, stages=grid.stages)
    with torch.random.fork_rng():
        return cut_positions(plan_by_time(model, (example,), config.blocks, options, timer))


def balance_by_time(grid: grids.Grid, sm: SplitModule, batch: tuple[torch.Tensor, torch.Tensor],
                    autocast_dtype: torch.dtype | None = None) -> None:
    """Regroup ``sm``'s pipeline stages by its blocks' training times on ``batch``, measured by rank 0
    on the grid's device (it holds the whole model there meanwhile) and sent to every rank: each
    process would measure other times, and every rank must train the same stages."""
    if grid.stages == 1:
        return
    times = [0.0] * sm.num_blocks
    if grid.rank == 0:
        x, y = (t.to(grid.device) for t in batch)
        times = measure_block_times(sm.to(grid.device), x, y, autocast_dtype=autocast_dtype)
    sm.plan = rebalance_stages(sm.plan, grids.from_first(grid, times, "rank 0 measured the block times"))


def train_distributed(config: TrainConfig, stages: int, out: str | None = None, resume: str | Checkpoint | None = None,
                      log: Callable[[str], None] = print, progress: bool = True, timeout: float = 300.0,
                      on_step: OnStep | None = None, stage_balance: str = "time",
                      schedule: PipelineSchedule | None = None) -> TrainResult | None:
    """This rank's part of a ``stages``-stage pipeline × data-parallel run of ``config``; rank 0 writes
    ``out/checkpoint.pt`` and ``metrics.jsonl`` after every epoch and returns the result, the others
    None. ``stage_balance="time"`` places a new run's stages at equal measured time and balances its
    blocks within them (:func:`placed_cuts`, recorded as ``config.cuts``), then groups the blocks by
    their measured times (:func:`balance_by_time`); ``"flops"`` groups the blocks one process would
    train by predicted FLOPs.
    ``timeout`` bounds every wait: a rank that stops or hangs ends the others with an error naming
    it. ``on_step(epoch, step)`` runs after each step (tests kill a rank there). ``schedule`` orders
    each rank's work (:mod:`splitfx.runtime.schedules`; default: the whole batch at once)."""
    state = open_resume(resume, config) if resume is not None else None
    config = replace(with_cuts_of(config, state.config) if state else config, device=resolve_device(config.device))
    if stage_balance not in STAGE_BALANCES:
        raise DistributedError(f"stage_balance must be one of {', '.join(STAGE_BALANCES)}, got {stage_balance!r}")
    one_process = {"--no-detach": not config.detach, f"--method {config.method}": config.method != "memory",
                   "--replace": config.replace is not None}
    single = [flag for flag, given in one_process.items() if given]
    if single:
        raise DistributedError(f"{', '.join(single)} (here or in the resumed checkpoint): a pipeline trains detached "
                               "blocks whose cuts it places by time on the plain model; train this run in one process, "
                               "without --stages")
    if config.channels_last:
        raise DistributedError("--channels-last (here or in the resumed checkpoint): a pipeline hands its blocks' "
                               "tensors between ranks in the default memory format; drop it (--no-channels-last "
                               "when resuming) or train in one process, without --stages")
    if stages > config.blocks:
        raise DistributedError(f"--stages {stages} is more than --blocks {config.blocks}: every stage trains at "
                               "least one block")
    grid = grids.start(stages, config.device, timeout)
    try:
        result = _train(grid, config, state, out, log, progress, on_step, stage_balance, schedule or Streaming())
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    grids.finish(grid)
    return result


def _train(grid: grids.Grid, config: TrainConfig, state: Checkpoint | None, out: str | None, log, progress: bool,
           on_step: OnStep | None, stage_balance: str, schedule: PipelineSchedule) -> TrainResult | None:
    pieces = grid.replicas * schedule.passes
    if config.batch < 2 * pieces:
        raise DistributedError(f"--batch {config.batch} split into {grid.replicas} replica shard(s) × "
                               f"{schedule.passes} micro-batch(es) leaves parts of fewer than 2 samples, which "
                               f"BatchNorm cannot train on: give --batch {2 * pieces} or more")
    log = log if grid.rank == 0 else (lambda _: None)
    begin = start(config)
    train_set, num_classes = begin.splits.train, begin.splits.num_classes
    monitor, monitored = begin.splits.monitored
    amp = amp_dtype(config)
    # A new run places its stages; a resumed one trains the blocks its checkpoint trained (its cuts,
    # or none: the plan's own balance), whatever the number of ranks.
    recipe = run_recipe(config, begin.splits.num_classes)
    if stage_balance == StageBalance.TIME and grid.stages > 1 and config.cuts is None and state is None:
        config = replace(config, cuts=placed_cuts(grid, config, recipe, begin.model, begin.example, amp))
        log(f"the blocks end at positions {' '.join(map(str, config.cuts))} (train these blocks in one process "
            f"with --cuts {' '.join(map(str, config.cuts))})")
    sm = convert_for(config, begin.model, begin.example, recipe, stages=grid.stages)
    if stage_balance == StageBalance.TIME:
        balance_by_time(grid, sm, (begin.example, begin.labels), amp)
    ranges = sm.plan.stages.ranges
    check_pipeline(sm, ranges)
    grids.agree(grid, _fingerprint(sm, config, grid), "the plan (or the training options)")
    if state is not None:
        sm.load_state_dict(state.model)
    stage = Stage(sm, *ranges[grid.stage])
    stage.place(grid.device)
    run = make_optimizer(config, [p for _, p in stage.named_parameters()])
    opt, sched, scaler = run.optimizer, run.scheduler, run.scaler
    result = TrainResult(config, sm.num_blocks, sm.plan.e2e_saved_bytes, [], sm.plan.e2e_saved_bytes, sm,
                         begin.example)
    start_epoch = 0
    if state is not None:
        opt.load_state_dict(stage_optimizer_state(state.optimizer, sm, stage))
        sched.load_state_dict(state.scheduler)
        torch.set_rng_state(state.rng)
        result.history = [EpochResult(**h) for h in state.history]
        result.e2e_saved_bytes = state.e2e_saved_bytes
        start_epoch = state.epoch + 1
    me = Rank(grid, stage, opt, scaler, amp, schedule=schedule)
    log(f"{config.model}: {sm.num_blocks} blocks on {grid.stages} stage(s) × {grid.replicas} replica(s), recipe "
        f"{config.recipe!r}, on {config.device}\n{sm.plan.stages.table()}")
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        sums, steps, peak = _epoch(me, train_set, config, epoch, progress, on_step)
        sched.step()
        accuracy = _evaluate(me, monitored, config.batch, epoch)
        totals = [0.0] * sm.num_blocks
        totals[stage.start:stage.end] = (sums / max(steps, 1) / grid.replicas).tolist()
        block_losses = _reduce(grid, totals)
        peak = int(_reduce(grid, [peak], dist.ReduceOp.MAX)[0])
        record_epoch(result, log, epoch_result(epoch + 1, block_losses, monitor, accuracy,
                                               time.perf_counter() - began, peak))
        if out is not None:
            _save(grid, result, stage, opt, sched, scaler, out, num_classes)
    me.close()
    log(result.summary())
    return result if grid.rank == 0 else None


def _save(grid: grids.Grid, result: TrainResult, stage: Stage, opt, sched, scaler, out: str, num_classes: int) -> None:
    """Gather the one-process checkpoint to rank 0 and write it (atomically) with the metrics."""
    history = [asdict(h) for h in result.history]
    ckpt = gather_checkpoint(grid, stage.sm, stage, opt, sched, scaler, config=asdict(result.config),
                             epoch=result.history[-1].epoch - 1, history=history,
                             e2e_saved_bytes=result.e2e_saved_bytes, num_classes=num_classes)
    if ckpt is not None:
        ckpt.save(os.path.join(out, CHECKPOINT))
        write_metrics(out, [{**h, "blocks": result.trained_blocks, "recipe": result.config.recipe,
                             "stages": grid.stages, "replicas": grid.replicas} for h in history])
    wait(dist.barrier(async_op=True), grid.timeout, f"rank {grid.rank}: a rank stopped while the checkpoint "
         "was written")
