"""The plan report: :class:`SplitPlan` and :class:`BlockPlan`, their table, JSON and picture.

Plain frozen data, so the planner can produce it, the runtime can hold it and programs can print it
without any of them importing the others. What ``convert`` builds from (the traced graph, the
emitted blocks and heads) is the planner's :class:`~splitfx.recipes.split.Split`, never the report.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .figures import pyplot, save
from .memory import training_state_bytes
from .sizes import nbytes
from .stage_plan import StagePlan


@dataclass(frozen=True)
class BlockPlan:
    """One gradient-isolated block. Byte counts are saved-for-backward activations."""

    index: int
    modules: list[str]
    params: int
    saved_bytes: int  # what loss k keeps: block k with its head; a cascade's: the two blocks and heads it runs
    aux_saved_bytes: int  # the aux head's saved bytes beyond what the block saves itself

    flops: int
    aux_flops: int
    aux_params: int
    output_shapes: list[list[int]] | None  # the tensors handed to the next block (None for the last)
    handover_bytes: int  # their bytes
    start: int
    end: int
    # The whole training step's peak while this block's loss is alive (weights, gradients so far,
    # optimizer state, activations, transients, batch; the optimizer's step counts with the last).
    step_peak_bytes: int = 0
    own_saved_bytes: int = 0  # the block alone on its detached input (the tensors handed to it included)

    @property
    def span(self) -> str:
        if not self.modules:
            return "(functional ops only)"
        return self.modules[0] if len(self.modules) == 1 else f"{self.modules[0]} … {self.modules[-1]}"


@dataclass(frozen=True)
class SplitPlan:
    """K contiguous blocks with their predicted cost, and E2E vs local peak activation memory."""

    model: str
    num_blocks: int
    method: str
    recipe: str
    input_shapes: list[list[int]]
    blocks: list[BlockPlan]
    e2e_saved_bytes: int
    local_peak_bytes: int
    total_params: int
    legal_cuts: int
    positions: int
    replaced: list[str]  # RepL: blocks whose weights are synthesised from their neighbours
    replace_skipped: dict[str, str]  # RepL candidates not replaced, and why
    trainable_params_before: int  # before RepL; like the next, only those the forward uses
    trainable_params: int  # after RepL (fusion coefficients included)
    shared_parameters: list[str] = field(default_factory=list)  # used on both sides of a would-be cut
    auto_leaves: dict[str, str] = field(default_factory=dict)  # modules fx could not trace → why
    param_bytes: int = 0  # every parameter: the model's, the aux heads', RepL coefficients
    trainable_bytes: int = 0  # those that get gradients and optimizer state
    stages: StagePlan | None = None  # plan(..., stages=S): the blocks of each pipeline rank
    saved_profile: list[int] = field(default_factory=list, repr=False)  # bytes first saved at each position
    # Why fake tensors could not run one local step (then saved_bytes are the per-op estimate), or None.
    simulation_error: str | None = None
    notes: list[str] = field(default_factory=list)  # what the plan could not honour, and what would
    # The whole training step's peak with ``optimizer`` (parameters, gradients, optimizer state, saved
    # activations, transient buffers, the batch), local and E2E, from one step on fake tensors; 0: unknown.
    optimizer: str = "adamw"
    step_peak_bytes: int = 0
    e2e_step_peak_bytes: int = 0

    @property
    def memory_ratio(self) -> float:
        return self.local_peak_bytes / max(self.e2e_saved_bytes, 1)

    def training_peak_bytes(self, optimizer: str | None = None) -> int:
        """Predicted peak memory of a local training step with ``optimizer`` (default: the plan's).
        For the plan's optimizer, the simulated step's peak (:attr:`step_peak_bytes`: transient
        buffers included); for another, or where fake tensors could not run the step, the largest
        block's saved activations plus every parameter and a gradient plus the optimizer's state for
        every trainable one (held whole, as ``train_step`` does before its one ``optimizer.step()``)."""
        optimizer = optimizer or self.optimizer
        if optimizer == self.optimizer and self.step_peak_bytes:
            return self.step_peak_bytes
        return self.local_peak_bytes + training_state_bytes(self.param_bytes, self.trainable_bytes, optimizer)

    def to_dict(self) -> dict[str, object]:
        """JSON-able view (per block keys ``modules``, ``params``, ``saved_bytes``, ``flops``, ...)."""
        skip = ("blocks", "saved_profile", "stages")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["blocks"] = [asdict(b) for b in self.blocks]
        d["stages"] = self.stages.to_dict() if self.stages is not None else None
        d["memory_ratio"] = self.memory_ratio
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A table for people: one row per block, then the E2E vs local summary."""
        rows = [("block", "modules", "params", "saved act.", "of which aux", "step peak", "GFLOPs", "aux params",
                 "hands over")]
        for b in self.blocks:
            rows.append((
                str(b.index), b.span, count(b.params), nbytes(b.saved_bytes), nbytes(b.aux_saved_bytes),
                nbytes(b.step_peak_bytes) if b.step_peak_bytes else "–", f"{(b.flops + b.aux_flops) / 1e9:.2f}",
                count(b.aux_params), _handover(b),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            f"{self.model}: {self.num_blocks} blocks by {self.method}, recipe {self.recipe!r}, "
            f"input {' '.join('×'.join(map(str, s)) for s in self.input_shapes)}, "
            f"{self.legal_cuts} legal cuts in {self.positions} nodes",
        ]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.rjust(w) if j >= 2 else c.ljust(w)
                                   for j, (c, w) in enumerate(zip(r, widths, strict=True))))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(
            f"predicted peak saved activations: E2E {nbytes(self.e2e_saved_bytes)}, "
            f"local {nbytes(self.local_peak_bytes)} ({self.memory_ratio:.2f}× E2E)"
        )
        if self.step_peak_bytes and self.e2e_step_peak_bytes:
            lines.append(f"predicted training step peak with {self.optimizer} (weights, gradients, optimizer state, "
                         f"activations, transients, batch): E2E {nbytes(self.e2e_step_peak_bytes)}, local "
                         f"{nbytes(self.step_peak_bytes)} ({self.step_peak_bytes / self.e2e_step_peak_bytes:.2f}× E2E)")
        if self.simulation_error:
            lines.append(f"saved activations estimated per op: fake tensors could not run a local step "
                         f"({self.simulation_error})")
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"kept whole (fx cannot trace inside it): {name}: {why}" for name, why in self.auto_leaves.items()]
        if self.shared_parameters:
            lines.append(f"kept in one block (used in several places, no cut between uses): "
                         f"{', '.join(self.shared_parameters)}; tied='detach' (--tied detach) lets the first block "
                         "that uses each train it and the later ones read it detached")
        lines += self._replacement_lines()
        if self.stages is not None:
            lines.append(self.stages.table())
        return "\n".join(lines)

    def _replacement_lines(self) -> list[str]:
        if not (self.replaced or self.replace_skipped):
            return []
        cut = 1 - self.trainable_params / max(self.trainable_params_before, 1)
        lines = [f"RepL replaced: {', '.join(self.replaced) or 'none'}; trainable parameters "
                 f"{count(self.trainable_params_before)} → {count(self.trainable_params)} ({100 * cut:.1f} % fewer)"]
        reasons: dict[str, list[str]] = {}
        for name, why in self.replace_skipped.items():
            reasons.setdefault(why, []).append(name)
        lines += [f"  not replaced ({why}): {', '.join(names)}" for why, names in reasons.items()]
        return lines

    __str__ = table

    def plot(self, path: str) -> None:
        """Write the picture of this plan (PNG/SVG/PDF by extension)."""
        _plot(self, path)


def _handover(block: BlockPlan) -> str:
    """One shape, or how many tensors and their bytes (``to_json`` lists every shape)."""
    if not block.output_shapes:
        return "(output)"
    if len(block.output_shapes) == 1:
        return "×".join(map(str, block.output_shapes[0]))
    return f"{len(block.output_shapes)} tensors, {nbytes(block.handover_bytes)}"


def count(n: int) -> str:
    """A parameter count for people: ``11.69M`` or the plain number below 100k."""
    return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def _plot(plan: SplitPlan, path: str) -> None:
    """Two panels: E2E saved bytes growing along the forward (cuts marked), and per-block bars."""
    plt = pyplot()
    mib = 2.0**20
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [3, 2]})
    cumulative = np.cumsum(np.asarray(plan.saved_profile, dtype=float)) / mib
    top.plot(np.arange(len(cumulative)), cumulative, color="tab:gray", label="E2E: saved activations so far")
    for b in plan.blocks:
        x = np.arange(b.start, b.end)
        top.fill_between(x, 0, cumulative[b.start:b.end], alpha=0.35, label=f"block {b.index}")
        if b.output_shapes:
            several = len(b.output_shapes) > 1
            top.axvline(b.end - 0.5, color="tab:red" if several else "black", lw=1.2 if several else 0.8,
                        ls=":" if several else "--")
    top.set_xlabel("node position in topological order (cuts: dashed one tensor, red dotted several)")
    top.set_ylabel("MiB")
    top.set_title(f"{plan.model}: predicted saved activations, input {plan.input_shapes[0]}")
    top.legend(loc="upper left", fontsize=8)

    idx = np.arange(plan.num_blocks)
    body = np.array([b.own_saved_bytes for b in plan.blocks]) / mib
    aux = np.array([b.aux_saved_bytes for b in plan.blocks]) / mib
    bottom.bar(idx, body, label="block")
    bottom.bar(idx, aux, bottom=body, label="aux head")
    bottom.axhline(plan.e2e_saved_bytes / mib, color="tab:red", label=f"E2E peak {plan.e2e_saved_bytes / mib:.1f} MiB")
    bottom.axhline(plan.local_peak_bytes / mib, color="tab:green", ls="--",
                   label=f"local peak {plan.local_peak_bytes / mib:.1f} MiB ({plan.memory_ratio:.2f}×)")
    bottom.set_xticks(idx, [f"{b.index}\n{b.span}" for b in plan.blocks], fontsize=7)
    bottom.set_ylabel("MiB")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
