"""One rank of the pipeline × data-parallel grid: what it trains with and how its work arrives.

Every rank runs steps 0, 1, 2, … in order. The first stage takes its batch from the data; every
later stage receives its first block's tensors, the targets, the whole batch's size and (when the
recipe's losses read them) the model's inputs from the stage before. The rank's schedule
(:mod:`.schedules`) orders the step's work; each stage sends its output on as soon as its last
block's forward is done, averages gradients over its data-parallel group, and steps its own optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .data_parallel import GradAverager, broadcast_buffers
from .grid import Grid
from .pipeline import Stage
from .schedules import PipelineSchedule, Streaming
from .step import run_step
from .transport import Link


class Work(NamedTuple):
    """One piece of a step as a rank receives it: its first block's tensors, the targets, the model's
    inputs (when the recipe's losses read them) and the size of the whole batch it is part of."""

    h: tuple
    target: torch.Tensor
    inputs: tuple
    whole: int


@dataclass
class Rank:
    """What one rank trains with: its stage, its links, optimizer, gradient averaging, AMP and the
    pipeline schedule (:mod:`.schedules`) that orders its work."""

    grid: Grid
    stage: Stage
    optimizer: torch.optim.Optimizer
    link: Link = field(init=False)
    averager: GradAverager | None = field(init=False)
    scaler: torch.amp.GradScaler | None = None
    autocast_dtype: torch.dtype | None = None
    in_flight: int = 2
    schedule: PipelineSchedule = field(default_factory=Streaming)

    def __post_init__(self) -> None:
        g = self.grid
        self.link = Link(g.rank, g.prev, g.next, g.device, g.timeout, self.in_flight)
        self.averager = None
        if g.replicas > 1:
            counts = {p: n * self.schedule.passes for p, n in self.stage.reach_counts().items()}
            self.averager = GradAverager(self.stage.grad_order(), counts, g.group, g.replicas,
                                         g.timeout, f"rank {g.rank}: a rank of data-parallel group "
                                         f"{g.replica_ranks()} stopped during the gradient all-reduce")

    def receive(self, tag: int, batch: tuple | None, whole: int | None = None) -> Work:
        """The work tagged ``tag``: ``batch`` (inputs, targets; part of a batch of ``whole`` samples) on
        the first stage, the previous rank's message on every later one."""
        if self.stage.start == 0:
            inputs, target = batch
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            return Work(inputs, target, inputs, whole if whole is not None else target.shape[0])
        got = self.link.recv(tag)
        n = self.stage.takes
        return Work(tuple(got[:n]), got[n], tuple(got[n + 2:]), int(got[n + 1]))

    def _send(self, outs: tuple, work: Work, tag: int, inputs: bool = False) -> None:
        whole = torch.tensor(work.whole, device=work.target.device)
        self.link.send([*outs, work.target, whole, *(work.inputs if inputs else ())], tag)

    def stage_losses(self, work: Work, tag: int):
        """This stage's losses on ``work``, its last block's output sent on (tagged ``tag``) before
        that block's loss is computed."""
        stage = self.stage
        forward_inputs = stage.needs_inputs and stage.end < stage.sm.num_blocks - 1

        def send(outs: tuple) -> None:
            self._send(outs, work, tag, forward_inputs)

        return stage.losses(work.h, work.target, work.inputs, send if self.grid.next is not None else None)

    def train_step(self, step: int, batch: tuple | None = None) -> list[float]:
        """One optimizer step of this rank's blocks, in the order of its schedule; ``batch`` (inputs,
        targets) on the first stage only. Returns this rank's per-block losses."""
        losses = run_step(self.schedule.losses(self, step, batch), self.optimizer, self.grid.device,
                          scaler=self.scaler, autocast_dtype=self.autocast_dtype,
                          before_step=self.averager.wait if self.averager is not None else None)
        self.stage.after_step()
        if self.averager is not None:
            self.sync_buffers()
        return self.schedule.per_block(losses, len(self.stage.blocks))

    def sync_buffers(self) -> None:
        """Every replica takes its first replica's buffers (BatchNorm statistics, EMA copies)."""
        g = self.grid
        owned = {id(t): t for t in self.stage.tensors() if t.device.type != "meta"}
        params = {id(p) for p in self.stage.sm.parameters()}
        buffers = [t for i, t in owned.items() if i not in params]
        if buffers:
            broadcast_buffers(buffers, g.replica_ranks()[0], g.group, g.timeout,
                              f"rank {g.rank}: a rank of data-parallel group {g.replica_ranks()} stopped")

    @torch.no_grad()
    def eval_step(self, step: int, batch: tuple | None = None) -> int:
        """Forward only; the last stage returns how many predictions equal the targets (others 0)."""
        work = self.receive(step, batch)
        out = self.stage.forward(work.h)
        if self.grid.next is not None:
            self._send(out, work, step)
            return 0
        return int((out.argmax(1) == work.target).sum().item())

    def close(self) -> None:
        """Wait for the sends still in flight; remove the gradient hooks."""
        self.link.flush()
        if self.averager is not None:
            self.averager.remove()
