"""The ranks of a run: S pipeline stages × R data-parallel replicas, over one process group.

Rank ``r`` is stage ``r % S`` of replica ``r // S``: a replica's stages are consecutive ranks (one
machine, when S divides the GPUs per node), and stage s of every replica forms one data-parallel
group. Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..base.errors import DistributedError
from .transport import wait


def check_world(world: int, stages: int) -> None:
    """Refuse a world size the stages do not divide."""
    if stages < 1:
        raise DistributedError(f"--stages must be at least 1, got {stages}")
    if world % stages:
        raise DistributedError(f"world size {world} is not a multiple of --stages {stages}: every data-parallel "
                               f"replica needs all {stages} stages; launch {stages}×R processes "
                               f"(torchrun --nproc-per-node {stages}) or change --stages")


@dataclass
class Grid:
    """This rank's place: its stage, its replica, its neighbours and its data-parallel group."""

    rank: int
    world: int
    stages: int
    device: torch.device
    timeout: float
    group: Any = field(default=None, repr=False)  # stage-wise data-parallel group (None: one replica)

    @property
    def replicas(self) -> int:
        return self.world // self.stages

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        return self.rank // self.stages

    @property
    def prev(self) -> int | None:
        return self.rank - 1 if self.stage > 0 else None

    @property
    def next(self) -> int | None:
        return self.rank + 1 if self.stage < self.stages - 1 else None

    def replica_ranks(self, stage: int | None = None) -> list[int]:
        """Global ranks of stage ``stage`` (this rank's by default) in every replica."""
        s = self.stage if stage is None else stage
        return [r * self.stages + s for r in range(self.replicas)]


def launched(stages: int) -> tuple[int, int]:
    """This rank and the world size torchrun set, checked against ``stages``."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise DistributedError("--stages runs one process per rank: launch with torchrun --nproc-per-node N "
                               "-m splitfx ... (RANK and WORLD_SIZE are not set)")
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    check_world(world, stages)
    return rank, world


def start(stages: int, device: str = "cpu", timeout: float = 300.0) -> Grid:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA, ``timeout`` seconds on
    every collective) and make the data-parallel groups."""
    rank, world = launched(stages)
    where = torch.device(device)
    if where.type == "cuda":
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout),
                                device_id=where if where.type == "cuda" else None)
    grid = Grid(rank, world, stages, where, timeout)
    for s in range(stages):  # every rank makes every group, in the same order
        ranks = grid.replica_ranks(s)
        group = dist.new_group(ranks, timeout=timedelta(seconds=timeout)) if grid.replicas > 1 else None
        if s == grid.stage:
            grid.group = group
    return grid


def digest(*parts: Any) -> int:
    """A 63-bit fingerprint of ``parts`` (their ``repr``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def agree(grid: Grid, value: int, what: str) -> None:
    """Refuse to go on unless every rank computed the same ``value`` (a plan's digest)."""
    mine = torch.tensor([value], dtype=torch.int64, device=grid.device)
    every = [torch.zeros_like(mine) for _ in range(grid.world)]
    wait(dist.all_gather(every, mine, async_op=True), grid.timeout,
         f"rank {grid.rank}: a rank stopped before training started")
    values = [int(t.item()) for t in every]
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise DistributedError(f"{what} differs between rank 0 and rank(s) {', '.join(map(str, differ))}: every rank "
                               "must run the same splitfx version, model, options and input size")


def from_first(grid: Grid, values: list[float], what: str) -> list[float]:
    """Rank 0's ``values`` on every rank (each passes as many): one measurement for all, where each
    rank's own would differ."""
    t = torch.tensor(values, dtype=torch.float64, device=grid.device)
    wait(dist.broadcast(t, 0, async_op=True), grid.timeout, f"rank {grid.rank}: a rank stopped while {what}")
    return t.tolist()


def barrier(grid: Grid) -> None:
    """Wait for every rank (at most the grid's timeout)."""
    wait(dist.barrier(async_op=True), grid.timeout, f"rank {grid.rank}: a rank stopped or hangs at a barrier")


def finish(grid: Grid) -> None:
    """Leave the process group cleanly (a barrier first: without it some ranks abort at exit)."""
    if dist.is_initialized():
        barrier(grid)
        dist.destroy_process_group()
