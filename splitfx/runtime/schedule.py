"""One rank's step of the pipeline × data-parallel schedule.

Every rank runs steps 0, 1, 2, … in order. The first stage takes its batch from the data; every
later stage receives its first block's tensors, the targets and (when the recipe's losses read them)
the model's inputs from the stage before. Each stage runs its blocks' losses and backwards, sends its
output on as soon as its last block's forward is done (so the next rank starts step t while this one
finishes it), averages gradients over its data-parallel group, and steps its own optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data_parallel import GradAverager, broadcast_buffers
from .grid import Grid
from .pipeline import Stage
from .step import run_step
from .transport import Link


@dataclass
class Rank:
    """What one rank trains with: its stage, its links, optimizer, gradient averaging and AMP."""

    grid: Grid
    stage: Stage
    optimizer: torch.optim.Optimizer
    link: Link = field(init=False)
    averager: GradAverager | None = field(init=False)
    scaler: torch.amp.GradScaler | None = None
    autocast_dtype: torch.dtype | None = None
    in_flight: int = 2

    def __post_init__(self) -> None:
        g = self.grid
        self.link = Link(g.rank, g.prev, g.next, g.device, g.timeout, self.in_flight)
        self.averager = None
        if g.replicas > 1:
            self.averager = GradAverager(self.stage.grad_order(), self.stage.reach_counts(), g.group, g.replicas,
                                         g.timeout, f"rank {g.rank}: a rank of data-parallel group "
                                         f"{g.replica_ranks()} stopped during the gradient all-reduce")

    def _receive(self, step: int, batch: tuple | None) -> tuple[tuple, torch.Tensor, tuple]:
        """(first block's tensors, targets, model inputs) of ``step``."""
        if self.stage.start == 0:
            inputs, target = batch
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            return inputs, target, inputs
        got = self.link.recv(step)
        n = self.stage.takes
        return tuple(got[:n]), got[n], tuple(got[n + 1:])

    def train_step(self, step: int, batch: tuple | None = None) -> list[float]:
        """One optimizer step of this rank's blocks; ``batch`` (inputs, targets) on the first stage
        only. Returns this rank's per-block losses."""
        h, target, inputs = self._receive(step, batch)
        stage = self.stage
        forward_inputs = stage.needs_inputs and stage.end < stage.sm.num_blocks - 1

        def send(outs: tuple) -> None:
            self.link.send([*outs, target, *(inputs if forward_inputs else ())], step)

        steps = stage.losses(h, target, inputs, send if self.grid.next is not None else None)
        losses = run_step(steps, self.optimizer, self.grid.device, scaler=self.scaler,
                          autocast_dtype=self.autocast_dtype,
                          before_step=self.averager.wait if self.averager is not None else None)
        stage.after_step()
        if self.averager is not None:
            self.sync_buffers()
        return torch.stack(losses).tolist()

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
        h, target, _ = self._receive(step, batch)
        out = self.stage.forward(h)
        if self.grid.next is not None:
            self.link.send([*out, target], step)
            return 0
        return int((out.argmax(1) == target).sum().item())

    def close(self) -> None:
        """Wait for the sends still in flight; remove the gradient hooks."""
        self.link.flush()
        if self.averager is not None:
            self.averager.remove()
