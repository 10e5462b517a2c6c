"""The statistics of ``splitfx accuracy``'s table: one cell per (model, variant, K) over seeds, 95 %
t-intervals, and differences to E2E paired by seed.

The same seed gives every recipe the same initial backbone weights and data order, so the per-seed
difference to E2E cancels what the seed alone decides; its interval is narrower than the two cells'
intervals side by side would suggest.
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

from ..base.errors import ArgumentError
from ..base.jsonl import Record

E2E = "e2e"
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its two-sided t-interval; ``half`` is None for a single value,
    whose spread cannot be estimated."""

    mean: float
    half: float | None
    n: int

    def shown(self, places: int = 3) -> str:
        """``mean ± half``, or the mean alone where there is no interval."""
        return f"{self.mean:.{places}f}" + ("" if self.half is None else f" ± {self.half:.{places}f}")

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (never, for a single value)."""
        return self.half is not None and abs(self.mean - value) > self.half


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and ``level`` t-interval of ``values`` (Student's t, n−1 degrees of freedom: with a handful
    of seeds the normal 1.96 would claim more certainty than there is)."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, n)
    return Interval(mean, float(student_t.ppf((1 + level) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n), n)


@dataclass(frozen=True)
class Cell:
    """The reported runs of one (model, variant, K): test accuracy (fraction) per seed, the chosen rate
    and the grid it was chosen from, and the measured memory (MiB, mean over seeds)."""

    model: str
    recipe: str
    variant: str  # the recipe, or one of its controls (no detach, uniform cuts), or its RepL twin
    detach: bool
    uniform: bool
    repl: bool
    k: int
    tests: dict[int, float]
    lr: float
    grid: tuple[float, ...]
    saved_mib: float
    e2e_saved_mib: float
    step_peak_mib: float | None

    @property
    def accuracy(self) -> Interval:
        return t_interval(list(self.tests.values()))

    @property
    def at_edge(self) -> bool:
        """The chosen rate is the grid's smallest or largest: the best rate may lie outside it."""
        return self.lr <= min(self.grid) or self.lr >= max(self.grid)

    @property
    def control(self) -> bool:
        """A control or a RepL twin: drawn hollow beside the plain recipe's filled points."""
        return not self.detach or self.uniform or self.repl


def _controls(record: Record) -> tuple[bool, bool]:
    """(detached, uniform cuts) of a line; lines older than the controls are detached, memory-balanced."""
    return record.get("detach") is not False, record.get("method") == "uniform"


def variant(record: Record) -> str:
    """The recipe, with what sets its cell apart from the plain one named: deep supervision (``detach``
    false), cuts balanced by another ``method`` than memory, RepL fusion (``replace`` given)."""
    method = record.get("method", "memory")
    return record["recipe"] + ("" if record.get("detach") is not False else " (no detach)") + \
        ("" if method == "memory" else f" ({method} cuts)") + ("" if record.get("replace") is None else " (RepL)")


def cell_key(record: Record) -> tuple:
    """What names a cell: model, recipe, requested K, options, and what sets it apart (:func:`variant`).
    Options as JSON, since a line read back holds lists where the config held tuples (InfoPro's
    lambda1=(5, 0)); lines written before the controls and RepL existed are the plain cell."""
    return (record["model"], record["recipe"], record["blocks"], json.dumps(record.get("recipe_options"),
                                                                             sort_keys=True), variant(record))


def summarise(reported: Iterable[Record]) -> dict[tuple[str, str, int], Cell]:
    """One cell per (model, variant, trained K), in the order the lines first name them; a seed reported
    twice counts once (the first). Raises ValueError when a cell's seeds ran at different rates: a cell
    reports the one rate its search chose; and when lines of different recipe options land in one cell."""
    groups: dict[tuple[str, str, int], dict[int, Record]] = {}
    options: dict[tuple[str, str, int], set[str]] = {}
    for r in reported:
        group = (r["model"], variant(r), r["trained_blocks"])
        groups.setdefault(group, {}).setdefault(r["seed"], r)
        options.setdefault(group, set()).add(cell_key(r)[3])
    cells = {}
    for (model, name, k), by_seed in groups.items():
        if len(options[model, name, k]) > 1:
            raise ArgumentError(f"{model} {name} K={k}: lines of several recipe options "
                                f"({'; '.join(sorted(options[model, name, k]))}); one table holds one set of options")
        rows = list(by_seed.values())
        lrs = sorted({r["lr"] for r in rows})
        if len(lrs) > 1:
            raise ArgumentError(f"{model} {name} K={k}: seeds reported at several learning rates "
                                f"({', '.join(f'{lr:g}' for lr in lrs)}); regenerate the cell")
        steps = [r.get("step_peak_mib") for r in rows]
        detach, uniform = _controls(rows[0])
        cells[model, name, k] = Cell(
            model=model, recipe=rows[0]["recipe"], variant=name, detach=detach, uniform=uniform,
            repl=rows[0].get("replace") is not None, k=k,
            tests={r["seed"]: r["test"] for r in rows}, lr=lrs[0],
            grid=tuple(sorted({lr for r in rows for lr in r.get("grid") or r["protocol"]["lrs"]})),
            saved_mib=statistics.fmean(r["peak_saved_mib"] for r in rows),
            e2e_saved_mib=statistics.fmean(r["e2e_saved_mib"] for r in rows),
            step_peak_mib=None if None in steps else statistics.fmean(steps))
    return cells


def ordered_variants(cells: Iterable[Cell]) -> list[str]:
    """E2E first, then the recipes in the order first seen, each followed by its controls."""
    found = {c.variant: c.recipe for c in cells}
    recipes, seen = list(dict.fromkeys(found.values())), list(found)
    return sorted(found, key=lambda v: (found[v] != E2E, recipes.index(found[v]), v != found[v], seen.index(v)))


def paired_difference(cell: Cell, e2e: Cell) -> Interval | None:
    """``cell`` minus E2E over the seeds both ran (per-seed differences, then their t-interval); None
    when they share no seed."""
    seeds = sorted(cell.tests.keys() & e2e.tests.keys())
    return t_interval([cell.tests[s] - e2e.tests[s] for s in seeds]) if seeds else None


def saved_ratio(cell: Cell, e2e: Cell | None) -> float:
    """Measured peak saved activations ÷ the E2E cell's, or ÷ one E2E step measured with the same runs
    when the table has no E2E cell."""
    return cell.saved_mib / (e2e.saved_mib if e2e else cell.e2e_saved_mib)


def step_ratio(cell: Cell, e2e: Cell | None) -> float | None:
    """Measured total bytes alive at the step's peak ÷ E2E's; None unless both were measured."""
    if e2e is None or cell.step_peak_mib is None or e2e.step_peak_mib is None:
        return None
    return cell.step_peak_mib / e2e.step_peak_mib


def training_seconds(records: Iterable[Record], kind: str = "wall") -> float | None:
    """``kind`` ("wall" or "cpu") seconds of the distinct runs among ``records`` (a run written twice
    counts once, and so does the seed-0 model a search trained and the report then evaluated); None
    when a run lacks them (lines written before CPU seconds were recorded)."""
    first: dict[tuple, float | None] = {}
    for r in records:
        if "wall_seconds" not in r:  # a cell the planner refused: nothing trained
            continue
        first.setdefault((cell_key(r), r["lr"], r["seed"]), r.get(f"{kind}_seconds"))
    return None if None in first.values() else sum(first.values())
