"""``splitfx accuracy``: E2E vs every recipe at several K, with seeds and validation-picked learning rates.

Every cell (model, recipe, K; E2E once per model at K=1) gets the same budget:

1. **search**: one run per learning rate of the grid, seed 0, evaluated after every epoch on the
   validation split (training images held out, :mod:`.data`); the test images are not read;
2. **choose** the rate whose final validation accuracy is best (:func:`choose_lr`, which sees
   validation curves only);
3. **report**: the chosen rate's seed-0 model and new runs for seeds 1 … N−1 at that rate are
   evaluated once on the test images.

Each finished run appends one JSON line to the results file (:mod:`splitfx.base.jsonl`), so a killed
table resumes where it stopped: runs are deterministic on CPU, so a seed-0 model lost between its
search and its test evaluation is retrained to the same weights. Lines of another protocol (epochs,
grid, data, ... differ) are ignored on resume.
"""
from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..base.jsonl import Record, append_record, read_records
from ..base.version import __version__
from ..recipes import create_recipe
from .config import TrainConfig, options_for, with_all_options
from .train import TrainResult, test_accuracy, train

# What must agree for two runs to belong to one table (the cell and the rate/seed are keys of a run).
PROTOCOL = ("epochs", "batch", "data", "input_size", "validation", "lr_decay", "weight_decay", "max_batches",
            "device", "amp")


def choose_lr(curves: dict[float, Sequence[float]]) -> float:
    """The learning rate whose run ends with the best validation accuracy; ties go to the better mean
    over the epochs, then to the smaller rate. Takes validation curves only: nothing else can steer it."""
    return max(curves, key=lambda lr: (curves[lr][-1], sum(curves[lr]) / len(curves[lr]), -lr))


def protocol(base: TrainConfig, lrs: Sequence[float], seeds: int) -> dict[str, Any]:
    """The settings every run of one table shares, recorded with each run."""
    return {**{k: getattr(base, k) for k in PROTOCOL}, "lrs": list(lrs), "seeds": seeds, "splitfx": __version__}


def cells(models: Iterable[str], recipes: Iterable[str], blocks: Sequence[int], base: TrainConfig) -> list[TrainConfig]:
    """One config per (model, recipe, K), E2E once per model; each recipe gets the options it takes."""
    out = []
    for model in models:
        for recipe in recipes:
            for k in (blocks if create_recipe(recipe).traits.split else [1]):
                out.append(with_all_options(replace(base, model=model, recipe=recipe, blocks=k,
                                                    recipe_options=options_for(recipe, base.recipe_options))))
    return out


def _key(config: TrainConfig | Record) -> tuple:
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    # As JSON: a record read back holds lists where the config holds tuples (InfoPro's lambda1=(5, 0)).
    return get("model"), get("recipe"), get("blocks"), json.dumps(get("recipe_options"), sort_keys=True)


def _unique(records: Iterable[Record]) -> list[Record]:
    """One record per cell, rate, seed and phase, the first (files written before cells with tuple
    options were recognised repeat them; training is deterministic, so a repeat holds the same numbers)."""
    first: dict[tuple, Record] = {}
    for r in records:
        first.setdefault((_key(r), r["lr"], r["seed"], r["phase"]), r)
    return list(first.values())


def _record(config: TrainConfig, result: TrainResult, phase: str, wall: float, table: dict) -> Record:
    return {
        "model": config.model, "recipe": config.recipe, "blocks": config.blocks, "recipe_options":
        config.recipe_options, "lr": config.lr, "seed": config.seed, "phase": phase,
        "trained_blocks": result.trained_blocks, "val": [h.val_accuracy for h in result.history],
        "test": None, "peak_saved_mib": result.peak_saved_bytes / 2**20,
        "e2e_saved_mib": result.e2e_saved_bytes / 2**20, "wall_seconds": wall, "protocol": table,
    }


def run(
    models: Sequence[str],
    recipes: Sequence[str],
    blocks: Sequence[int],
    base: TrainConfig,
    *,
    lrs: Sequence[float],
    seeds: int,
    results: str,
    log: Callable[[str], None] = print,
    trainer: Callable[[TrainConfig], TrainResult] | None = None,
) -> list[Record]:
    """Search, choose and report every cell (see the module docstring), appending to ``results``;
    returns the report lines (one per cell and seed) of this protocol, earlier ones included."""
    if not base.validation:
        raise ValueError("accuracy tables choose learning rates on a validation split: give validation > 0")
    trainer = trainer or (lambda config: train(config, log=lambda _: None, progress=False))
    table = protocol(base, lrs, seeds)
    mine = _unique(r for r in read_records(results) if r.get("protocol") == table)
    todo = cells(models, recipes, blocks, base)
    for n, cell in enumerate(todo, 1):
        gc.collect()  # the last cell's models: fx graphs hold reference cycles, which wait for the collector
        done = [r for r in mine if _key(r) == _key(cell)]
        for line in _cell(cell, done, lrs, seeds, trainer, table):
            append_record(results, line)
            mine.append(line)
            what = (f"test {100 * line['test']:.2f} %" if line["phase"] == "test"
                    else f"val {100 * line['val'][-1]:.2f} %")
            log(f"[{n}/{len(todo)}] {cell.model} {cell.recipe} K={line['trained_blocks']} lr={line['lr']:g} "
                f"seed {line['seed']} ({line['phase']}): {what}, {line['wall_seconds']:.0f} s")
    return [r for r in mine if r["phase"] == "test"]


def _cell(cell: TrainConfig, done: list[Record], lrs: Sequence[float], seeds: int,
          trainer: Callable[[TrainConfig], TrainResult], table: dict) -> Iterable[Record]:
    def fit(lr: float, seed: int) -> tuple[TrainResult, float]:
        began = time.perf_counter()
        result = trainer(replace(cell, lr=lr, seed=seed))
        return result, time.perf_counter() - began

    curves = {r["lr"]: r["val"] for r in done if r["phase"] == "search"}
    kept: dict[float, tuple[TrainResult, float]] = {}
    for lr in lrs:
        if lr not in curves:
            result, wall = kept[lr] = fit(lr, 0)
            line = _record(replace(cell, lr=lr, seed=0), result, "search", wall, table)
            curves[lr] = line["val"]
            yield line
    chosen = choose_lr({lr: curves[lr] for lr in lrs})
    reported = {r["seed"] for r in done if r["phase"] == "test"}
    for seed in range(seeds):
        if seed in reported:
            continue
        result, wall = kept.pop(chosen) if seed == 0 and chosen in kept else fit(chosen, seed)
        line = _record(replace(cell, lr=chosen, seed=seed), result, "test", wall, table)
        line["test"] = test_accuracy(result)
        yield line
