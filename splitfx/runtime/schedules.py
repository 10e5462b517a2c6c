"""Pipeline schedules: the order in which one rank runs its blocks over a step's batch, chosen by name
(``--schedule``), as ``torch.distributed.pipelining`` picks its ``Schedule`` classes.

No gradient crosses a cut, so a rank never waits for a later rank: what a schedule decides is how a
step's batch flows through this rank and when it is sent on. Every schedule runs its losses through
:func:`~.step.run_step` (one optimizer step per training step) and sends each piece of work on as soon
as this rank's last block has run it forward.

Adding one: subclass :class:`PipelineSchedule`, decorate it with ``@register_schedule("name")`` and
implement :meth:`~PipelineSchedule.losses`, the generator of this rank's losses for one step.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

import torch

from ..base.choices import registering
from ..base.errors import ArgumentError
from .pipeline import Stage


class Rank(Protocol):
    """What a schedule uses of a rank (:class:`~.rank.Rank`): its stage, receiving work, and
    running the stage's losses on it with the output sent on."""

    stage: Stage

    def receive(self, tag: int, batch: tuple | None, whole: int | None = None) -> Any: ...

    def stage_losses(self, work: Any, tag: int) -> Iterator[torch.Tensor]: ...

SCHEDULES: dict[str, type[PipelineSchedule]] = {}


def register_schedule(name: str) -> Callable[[type[PipelineSchedule]], type[PipelineSchedule]]:
    """Class decorator: make a schedule available as ``--schedule name``."""
    return registering(SCHEDULES, name, "pipeline schedule", named=True)


class PipelineSchedule:
    """One rank's order of work within a step. ``passes`` is how many times each loss of the step
    runs (gradient averaging across replicas waits for that many gradients per parameter)."""

    name: ClassVar[str] = "base"

    @property
    def passes(self) -> int:
        return 1

    def losses(self, rank: Rank, step: int, batch: tuple | None) -> Iterator[torch.Tensor]:
        """This rank's losses of ``step``, in the order they run; ``batch`` on the first stage only."""
        raise NotImplementedError

    def per_block(self, losses: list[torch.Tensor], blocks: int) -> list[float]:
        """The step's loss of each of this rank's blocks, from what :meth:`losses` yielded."""
        return torch.stack(losses).tolist()


@register_schedule("stream")
class Streaming(PipelineSchedule):
    """The whole batch at once: receive, run each block's forward, send the last block's output on
    before its backward, then its backward. The next rank starts step t while this one finishes it
    and starts t+1, so after the pipeline fills every rank stays busy; the weights equal one
    process's ``train_step`` bit for bit."""

    def losses(self, rank: Rank, step: int, batch: tuple | None) -> Iterator[torch.Tensor]:
        yield from rank.stage_losses(rank.receive(step, batch), step)


@register_schedule("microbatch")
class MicroBatches(PipelineSchedule):
    """Each batch as ``microbatches`` equal parts sent on one by one, so the next rank starts after
    the first part instead of the whole batch: the pipeline fills and drains faster. Gradients are
    accumulated (each part's loss weighted by its share of the batch) and stepped once. For losses
    that are means over the batch and blocks without batch statistics (no BatchNorm) this is the
    same gradient as :class:`Streaming` up to float rounding; with BatchNorm each part has its own
    statistics."""

    def __init__(self, microbatches: int = 2):
        if not isinstance(microbatches, int) or microbatches < 1:
            raise ArgumentError(f"microbatches must be a positive int, got {microbatches!r}")
        self.microbatches = microbatches

    @property
    def passes(self) -> int:
        return self.microbatches

    def losses(self, rank: Rank, step: int, batch: tuple | None) -> Iterator[torch.Tensor]:
        parts = _split(batch, self.microbatches) if batch is not None else [None] * self.microbatches
        whole = batch[1].shape[0] if batch is not None else None
        for m, part in enumerate(parts):
            tag = step * self.microbatches + m
            work = rank.receive(tag, part, whole)
            share = work.target.shape[0] / work.whole  # mean losses: each part's weight in the batch's mean
            for loss in rank.stage_losses(work, tag):
                yield loss * share

    def per_block(self, losses: list[torch.Tensor], blocks: int) -> list[float]:
        return torch.stack(losses).view(self.microbatches, blocks).sum(0).tolist()


def _split(batch: tuple, n: int) -> list[tuple]:
    """``batch`` (inputs, targets) as ``n`` consecutive parts; refused when it has fewer samples."""
    inputs, target = batch
    if target.shape[0] < n:
        raise ArgumentError(f"a batch of {target.shape[0]} samples cannot be split into {n} micro-batches; "
                            "give --microbatches at most the batch size")
    chunks = [t.tensor_split(n) for t in (inputs if isinstance(inputs, tuple) else (inputs,))]
    return [(tuple(c[m] for c in chunks), target.tensor_split(n)[m]) for m in range(n)]


def schedule_named(name: str, microbatches: int = 2) -> PipelineSchedule:
    """The schedule registered as ``name`` (``microbatches`` for those that take it)."""
    if name not in SCHEDULES:
        raise ArgumentError(f"unknown pipeline schedule {name!r}; choose one of {', '.join(sorted(SCHEDULES))}")
    cls = SCHEDULES[name]
    return cls(microbatches) if cls is MicroBatches else cls()
