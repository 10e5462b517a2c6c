"""``splitfx accuracy``: E2E vs every recipe at several K, with paired seeds and validation-picked rates.

Every cell (model, recipe, K; E2E once per model at K=1) gets the same budget:

1. **search**: one run per learning rate of the grid, seed 0, evaluated after every epoch on the
   validation split (training images held out, :mod:`.data`); the test images are not read;
2. **choose** the rate whose final validation accuracy is best (:func:`choose_lr`, which sees
   validation curves only); while it is at an edge of the grid, one more rate beyond that edge is
   searched (:func:`widened`, at most ``widen`` of them), so the rate reported is an interior best;
3. **report**: the chosen rate's seed-0 model and new runs for seeds 1 … N−1 at that rate are
   evaluated once on the test images. Seed s gives every cell the same initial backbone weights and
   the same data order, so differences between cells are paired by seed.

Controls (``controls``): for a recipe, the same heads with no detach (deep supervision) and uniform
cuts instead of memory-balanced ones, at every K. Each finished run appends one JSON line to the
results file (:mod:`splitfx.base.jsonl`) with its provenance (commit, command, machine, the code's
digest, torch and timm), so a killed table resumes where it stopped: runs are deterministic on CPU,
so a seed-0 model lost between its search and its test evaluation is retrained to the same weights.
Lines of another protocol (epochs, grid, data, ... differ) are ignored on resume.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..base.errors import PlanError
from ..base.jsonl import Record, append_record, read_records
from ..base.provenance import one_code, provenance
from ..base.version import __version__
from ..recipes import create_recipe
from .accuracy_stats import cell_key, variant
from .config import TrainConfig, options_for, with_all_options
from .train import TrainResult, test_accuracy, train

REFUSED = "refused"  # the phase of a cell's line when the planner cannot split it so (its reason kept)
# Rates the search may add beyond the grid (default), one step at a time, while the best is at its edge.
WIDEN = 2
# What must agree for two runs to belong to one table (the cell and the rate/seed are keys of a run).
PROTOCOL = ("epochs", "batch", "data", "input_size", "validation", "lr_decay", "weight_decay", "max_batches",
            "device", "amp", "max_cut_tensors")


def choose_lr(curves: dict[float, Sequence[float]]) -> float:
    """The learning rate whose run ends with the best validation accuracy; ties go to the better mean
    over the epochs, then to the smaller rate. Takes validation curves only: nothing else can steer it."""
    return max(curves, key=lambda lr: (curves[lr][-1], sum(curves[lr]) / len(curves[lr]), -lr))


def protocol(base: TrainConfig, lrs: Sequence[float], seeds: int, widen: int = WIDEN,
             lr_at: int | None = None) -> dict[str, Any]:
    """The settings every run of one table shares, recorded with each run (``channels_last`` only when
    set, so tables made before it existed still match)."""
    return {**{k: getattr(base, k) for k in PROTOCOL}, **({"channels_last": True} if base.channels_last else {}),
            "lrs": list(lrs), "widen": widen, "lr_at": lr_at,
            "seeds": seeds, "splitfx": __version__}


def cells(models: Iterable[str], recipes: Iterable[str], blocks: Sequence[int], base: TrainConfig,
          controls: Iterable[str] = (), repl: int | list[str] | None = None,
          repl_recipes: Iterable[str] = ()) -> list[TrainConfig]:
    """One config per (model, recipe, K), E2E once per model; each recipe gets the options it takes.
    Each recipe in ``controls`` also gets, at every K, its two controls: deep supervision (the same
    heads, no detach) and uniform cuts (``method="uniform"``) instead of the memory-balanced ones; each
    in ``repl_recipes`` a twin with RepL fusion (``replace=repl``)."""
    out = []
    for model in models:
        for recipe in recipes:
            for k in (blocks if create_recipe(recipe).traits.split else [1]):
                cell = with_all_options(replace(base, model=model, recipe=recipe, blocks=k,
                                                recipe_options=options_for(recipe, base.recipe_options)))
                out.append(cell)
                if recipe in controls and k > 1:
                    out += [replace(cell, detach=False), replace(cell, method="uniform")]
                if recipe in repl_recipes:
                    out.append(replace(cell, replace=repl))
    return out


def _key(config: TrainConfig | Record) -> tuple:
    """The cell a config or a results line belongs to (:func:`~.accuracy_stats.cell_key`)."""
    return cell_key(config if isinstance(config, dict) else _identity(config))


def _unique(records: Iterable[Record]) -> list[Record]:
    """One record per cell, rate, seed and phase, the first (files written before cells with tuple
    options were recognised repeat them; training is deterministic, so a repeat holds the same numbers)."""
    first: dict[tuple, Record] = {}
    for r in records:
        first.setdefault((_key(r), r.get("lr"), r.get("seed"), r["phase"]), r)
    return list(first.values())


def widened(grid: Sequence[float], chosen: float, limit: int) -> float | None:
    """The rate to search next when ``chosen`` is at an edge of ``grid`` (sorted, geometric: one more
    step beyond that edge), so the reported rate is an interior optimum; None when it is interior or
    ``grid`` already holds ``limit`` rates."""
    if len(grid) < 2 or len(grid) >= limit or grid[0] < chosen < grid[-1]:
        return None
    step = grid[1] / grid[0] if chosen == grid[0] else grid[-1] / grid[-2]
    return float(f"{(chosen / step if chosen == grid[0] else chosen * step):.3g}")


def _identity(config: TrainConfig) -> Record:
    """The fields that name a cell (:func:`_key` reads them back)."""
    return {"model": config.model, "recipe": config.recipe, "blocks": config.blocks,
            "recipe_options": config.recipe_options, "detach": config.detach, "method": config.method,
            "replace": config.replace}


def _record(config: TrainConfig, result: TrainResult, phase: str, seconds: tuple[float, float], table: dict,
            grid: Iterable[float]) -> Record:
    return {
        **_identity(config), "lr": config.lr, "seed": config.seed, "phase": phase,
        "trained_blocks": result.trained_blocks, "val": [h.val_accuracy for h in result.history],
        "test": None, "peak_saved_mib": result.peak_saved_bytes / 2**20,
        "e2e_saved_mib": result.e2e_saved_bytes / 2**20, "step_peak_mib": _mib(result.history[0].step_peak_bytes),
        "grid": sorted(grid), "wall_seconds": seconds[0], "cpu_seconds": seconds[1],
        "protocol": table, "provenance": provenance(),
    }


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def run(
    models: Sequence[str],
    recipes: Sequence[str],
    blocks: Sequence[int],
    base: TrainConfig,
    *,
    lrs: Sequence[float],
    seeds: int,
    results: str,
    controls: Sequence[str] = (),
    repl: int | list[str] | None = None,
    repl_recipes: Sequence[str] = (),
    widen: int = WIDEN,
    lr_at: int | None = None,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
    trainer: Callable[[TrainConfig], TrainResult] | None = None,
) -> list[Record]:
    """Search, choose and report every cell (see the module docstring), appending to ``results``;
    returns the report lines (one per cell and seed) of this protocol, earlier ones included.

    ``lr_at=K`` searches each recipe's rate at K only and trains its other K and its controls at that
    rate (as the methods' papers keep one setting across K); None searches every cell. ``shard=(i,
    n)`` trains only the recipes i, i+n, ... (per model, in order, E2E first), so n processes share a
    table (each appending to its own file, or to one: lines are appended whole)."""
    if not base.validation:
        raise ValueError("accuracy tables choose learning rates on a validation split: give validation > 0")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: give i/n with 0 <= i < n")
    if lr_at is not None and lr_at not in blocks:
        raise ValueError(f"lr_at={lr_at}: the rate is searched at one of the table's K ({', '.join(map(str, blocks))})")
    trainer = trainer or (lambda config: train(config, log=lambda _: None, progress=False))
    table = protocol(base, lrs, seeds, widen, lr_at)
    mine = _unique(r for r in read_records(results) if r.get("protocol") == table)
    if mine:  # resuming: refused before any training where other code made the table's lines
        one_code([*(r.get("provenance") or {} for r in mine), provenance()])
    todo = cells(models, recipes, blocks, base, controls, repl, repl_recipes)
    groups = list(dict.fromkeys((c.model, c.recipe) for c in todo))
    for g, group in enumerate(groups):
        if g % count != index:
            continue
        mates = [c for c in todo if (c.model, c.recipe) == group]
        searched = [c for c in mates if lr_at is None or _searches(c, lr_at)]
        source: list[Record] = []  # the searched cell's report lines, when the others take its rate
        for cell in sorted(mates, key=lambda c: c not in searched):
            gc.collect()  # the last cell's models: fx graphs hold reference cycles, which wait for the collector
            done = [r for r in mine if _key(r) == _key(cell)]
            if any(r["phase"] == REFUSED for r in done):
                continue
            fixed = (source[0]["lr"], source[0]["grid"]) if cell not in searched and source else None
            where = f"[{todo.index(cell) + 1}/{len(todo)}]"
            try:
                for line in _cell(cell, done, lrs, len(lrs) + widen, seeds, trainer, table, fixed):
                    append_record(results, line)
                    mine.append(line)
                    _log(log, where, cell, line)
            except PlanError as err:  # hpff and mlaan at K=2: one loss would train the whole network
                line = {**_identity(cell), "phase": REFUSED, "reason": str(err), "protocol": table,
                        "provenance": provenance()}
                append_record(results, line)
                mine.append(line)
                log(f"{where} {cell.model} {variant(_identity(cell))} K={cell.blocks}: refused by the planner: {err}")
            if cell in searched:
                source = [r for r in mine if _key(r) == _key(cell) and r["phase"] == "test"]
    return [r for r in mine if r["phase"] == "test"]


def _searches(cell: TrainConfig, lr_at: int) -> bool:
    """Whether ``cell`` searches its own rate under ``lr_at``: E2E (with RepL or not), and each recipe's
    plain cell at that K."""
    return cell.recipe == "e2e" or (cell.blocks == lr_at and variant(_identity(cell)) == cell.recipe)


def _log(log: Callable[[str], None], where: str, cell: TrainConfig, line: Record) -> None:
    what = f"test {100 * line['test']:.2f} %" if line["phase"] == "test" else f"val {100 * line['val'][-1]:.2f} %"
    log(f"{where} {cell.model} {variant(_identity(cell))} K={line['trained_blocks']} lr={line['lr']:g} seed "
        f"{line['seed']} ({line['phase']}): {what}, {line['wall_seconds']:.0f} s")


def _cell(cell: TrainConfig, done: list[Record], lrs: Sequence[float], most: int, seeds: int,
          trainer: Callable[[TrainConfig], TrainResult], table: dict,
          fixed: tuple[float, list[float]] | None = None) -> Iterable[Record]:
    """The lines ``cell`` still lacks: its search (unless ``fixed`` gives the rate and the grid it was
    chosen from, by another cell), then a report line per seed."""
    def fit(lr: float, seed: int) -> tuple[TrainResult, tuple[float, float]]:
        """The run, and its wall and CPU seconds (this process's, every thread's)."""
        began, cpu = time.perf_counter(), time.process_time()
        result = trainer(replace(cell, lr=lr, seed=seed))
        return result, (time.perf_counter() - began, time.process_time() - cpu)

    curves = {r["lr"]: r["val"] for r in done if r["phase"] == "search"}
    kept: dict[float, tuple[TrainResult, tuple[float, float]]] = {}
    chosen, grid = fixed if fixed is not None else (None, sorted(lrs))
    while chosen is None:
        for lr in grid:
            if lr not in curves:
                result, seconds = kept[lr] = fit(lr, 0)
                line = _record(replace(cell, lr=lr, seed=0), result, "search", seconds, table, grid)
                curves[lr] = line["val"]
                yield line
        best = choose_lr({lr: curves[lr] for lr in grid})
        further = widened(grid, best, most)
        if further is None:
            chosen = best
        else:
            grid = sorted([*grid, further])
            kept = {lr: run for lr, run in kept.items() if lr == best}  # only the chosen model may be reported
    reported = {r["seed"] for r in done if r["phase"] == "test"}
    for seed in range(seeds):
        if seed in reported:
            continue
        result, seconds = kept.pop(chosen) if seed == 0 and chosen in kept else fit(chosen, seed)
        line = _record(replace(cell, lr=chosen, seed=seed), result, "test", seconds, table, grid)
        line["test"] = test_accuracy(result)
        yield line
