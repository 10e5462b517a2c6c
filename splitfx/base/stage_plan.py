"""The pipeline report: which blocks each rank trains, its share of the time, the bubble.

Plain frozen data like :mod:`.report`: the planner fills it (``plan(..., stages=S)``), the runtime reads its
``ranges``, programs print its :meth:`StagePlan.table`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .choices import Choice
from .sizes import nbytes


class StageBalance(Choice):
    """What a pipeline's stages are balanced by: predicted training FLOPs, or training time measured
    on the converted blocks (``convert`` and ``train --stages``, which then place the stages first)."""

    FLOPS = "flops"
    TIME = "time"


@dataclass(frozen=True)
class StagePlan:
    """S contiguous ranges of blocks, one per pipeline rank, balanced by predicted training FLOPs or,
    when ``seconds`` are given, by measured block times.

    ``flops`` are a training step's (forward + backward ≈ 3 × forward, aux heads included),
    ``seconds`` (None unless measured) each stage's measured training time per batch, ``memory`` a
    rank's predicted peak: its parameters, gradients and optimizer state, its largest block's saved
    activations, the tensors it receives and the sends it keeps in flight. Shares and the bubble come
    from ``seconds`` when there are some: they are what the stages were balanced by."""

    ranges: list[tuple[int, int]]  # [start, end) block indices per stage
    flops: list[int]
    memory: list[int]
    handover_bytes: list[int]  # what each stage sends on per batch (0 for the last)
    optimizer: str = "adamw"
    memory_budget: int | None = None  # per rank, when one was given
    in_flight: int = 2  # sends a rank keeps in flight (counted in memory)
    notes: list[str] = field(default_factory=list)
    seconds: list[float] | None = None  # measured training time per batch of each stage

    @property
    def balanced_by(self) -> str:
        """``"time"`` (measured block times) or ``"flops"`` (predicted training FLOPs)."""
        return "flops" if self.seconds is None else "time"

    @property
    def _costs(self) -> list[float]:
        return list(self.flops) if self.seconds is None else list(self.seconds)

    @property
    def stages(self) -> int:
        return len(self.ranges)

    def stage_of(self, block: int) -> int:
        """The stage that trains ``block``."""
        return next(s for s, (a, b) in enumerate(self.ranges) if a <= block < b)

    @property
    def shares(self) -> list[float]:
        """Each stage's fraction of the training time: measured, else predicted by FLOPs."""
        total = sum(self._costs)
        return [c / total if total else 0.0 for c in self._costs]

    def bubble(self, batches: int | None = None) -> float:
        """Predicted idle fraction of the ranks. No gradient goes back, so batches stream through
        without a flush: at steady state only imbalance idles a rank (1 − mean/max stage time);
        over ``batches`` batches the pipeline also fills and drains once."""
        slowest, total = max(self._costs), sum(self._costs)
        if not slowest:
            return 0.0
        if batches is None:
            return 1 - total / (self.stages * slowest)
        span = total + (batches - 1) * slowest
        return 1 - batches * total / (self.stages * span)

    def table(self) -> str:
        """One row per stage: its blocks, share of the time, FLOPs (and measured seconds), predicted
        memory, what it sends."""
        timed = self.seconds is not None
        rows = [("stage", "blocks", "time share", "GFLOPs/step", *(("s/step",) if timed else ()), "memory", "sends")]
        for s, ((a, b), f, m, h) in enumerate(zip(self.ranges, self.flops, self.memory, self.handover_bytes,
                                                   strict=True)):
            rows.append((str(s), f"{a}" if b - a == 1 else f"{a}–{b - 1}", f"{100 * self.shares[s]:.1f} %",
                         f"{f / 1e9:.2f}", *((f"{self.seconds[s]:.3g}",) if timed else ()), nbytes(m),
                         nbytes(h) if h else "–"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        by = "measured block times" if timed else "predicted training FLOPs"
        lines = [f"pipeline: {self.stages} stages balanced by {by}"
                 + (f", each within {nbytes(self.memory_budget)}" if self.memory_budget else "")]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.rjust(w) if j >= 2 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths,
                                                                                                          strict=True))))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(f"expected bubble: {100 * self.bubble():.1f} % at steady state (stage imbalance; no flush "
                     f"between batches), {100 * self.bubble(100):.1f} % over 100 batches (fill and drain once)")
        return "\n".join(lines + self.notes)

    def to_dict(self) -> dict:
        return {"ranges": [list(r) for r in self.ranges], "flops": self.flops, "memory": self.memory,
                "handover_bytes": self.handover_bytes, "shares": self.shares, "bubble": self.bubble(),
                "optimizer": self.optimizer, "memory_budget": self.memory_budget, "in_flight": self.in_flight,
                "balanced_by": self.balanced_by, "seconds": self.seconds}
