"""The FFR reproduction (docs/ffr.md): FFR against backpropagation on MLP regressors.

* **Error**: ``splitfx.models:mlp8`` (8 ReLU layers of 256 and a linear output) on scikit-learn's
  diabetes data and on Friedman #1, trained as ``splitfx train --task regression`` trains it (the same
  :func:`~.train.train`): backprop end to end (``e2e``) and ``ffr`` at K = 8 (a block per layer, the
  output layer in the last). Per method and data, one run per learning rate of the grid (seed 0) on
  the validation split (15 % of the training samples); the rate with the lowest final validation RMSE
  is kept, and its runs for seeds 0 … N−1 are scored once on the test set: RMSE and MAE in the
  target's units (the standardisation undone). The grid spans 3e-5 … 3e-2: on diabetes every method
  chose the grid's lowest rate when it began at 3e-4, so its optimum may have lain below.
* **Splits**: 88 test patients make one diabetes split a weak judge, so each method also runs at
  its chosen rate on ``SPLITS`` random train/test splits (``--data diabetes@S``, split S from seed S,
  trained on all of the split's training samples), and the report gives the FFR ÷ backprop ratio
  paired by split with its 95 % t-interval.
* **Memory and time**: :func:`~.bench.run` (``splitfx bench``: the same meter of live saved
  activations for both, median step time) on 8- and 32-layer MLPs at K = depth, backprop and FFR in
  one process, at two sizes: the accuracy runs' (width 256, batch 64) and a compute-bound one (width
  1024, batch 512), with one torch thread; and, timed in the same run, the same blocks with no heads
  (``bench``'s ``floor``: one backward per block on its output's mean square), the least a step with
  one backward per layer takes, so the part of FFR's time that its heads cost is seen apart from the
  part that any layer-local rule costs.

Every finished run appends one line to the results file (commit, command and machine on each, and
the protocol of its part: the error runs' or the benchmark's), and a run already there under the
same protocol is not run again, so the generator resumes after being stopped; the table is written
from the file. ``python -m splitfx.programs.ffr_results --results docs/ffr.jsonl --out
docs/ffr.md`` (``--quick``: a few epochs and steps, to check that it runs).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ..api.planning import plan
from ..api.staging import cut_positions
from ..base.files import write_text
from ..base.jsonl import Record, append_record, read_records
from ..base.provenance import provenance
from ..models.tasks import MLP
from . import bench
from .accuracy_stats import t_interval
from .config import TrainConfig, with_all_options
from .data import FEATURES
from .regression import test_errors
from .train import train

DATA = {"diabetes": dict(epochs=30, lr_decay=0.9), "friedman": dict(epochs=20, lr_decay=0.9)}
LRS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = 3
SPLITS = 10  # random train/test splits of diabetes (its test set is 88 patients)
DEPTHS = (8, 32)
SIZES = ((256, 64), (1024, 512))  # (width, batch) of the benchmark
RECIPES = ("e2e", "ffr", "ffr_pre")  # ffr_pre: FFR with its cuts before each ReLU instead of after


def protocol(quick: bool) -> dict:
    """What the lines of each part share, by part (``errors``, ``splits``, ``bench``): lines of another
    protocol are ignored, so changing one part's settings reruns that part alone."""
    if quick:
        return {"errors": {"data": {"diabetes": dict(epochs=4, lr_decay=0.9), "friedman": dict(epochs=1, lr_decay=0.9)},
                           "lrs": [1e-3, 3e-3], "seeds": 1},
                "splits": {"data": "diabetes", "count": 2},
                "bench": {"depths": [8], "sizes": [[64, 32]], "steps": 3, "floor": True}}
    return {"errors": {"data": DATA, "lrs": list(LRS), "seeds": SEEDS},
            "splits": {"data": "diabetes", "count": SPLITS},
            "bench": {"depths": list(DEPTHS), "sizes": [list(s) for s in SIZES], "steps": 20, "floor": True}}


def config(data: str, recipe: str, lr: float, seed: int, table: dict, split: int | None = None) -> TrainConfig:
    """The run of ``recipe`` on ``data`` at ``lr`` from ``seed``, with a validation split, or with none
    on the ``split``-th random train/test split of ``data`` (``ffr_pre``: ``ffr`` with its blocks ending
    at each layer's Linear, ``--cuts`` as ``splitfx train`` takes them)."""
    cuts = before_relu(8, FEATURES[data]) if recipe == "ffr_pre" else None
    return with_all_options(TrainConfig(
        model="splitfx.models:mlp8", blocks=1 if recipe == "e2e" else 8, recipe=recipe.removesuffix("_pre"), batch=64,
        data=data if split is None else f"{data}@{split}", task="regression", input_size=FEATURES[data], device="cpu",
        lr=lr, seed=seed, validation=0.15 if split is None else 0.0, cuts=cuts, **table["data"][data]))


def chosen_lr(val: dict[float, float], lrs: list[float]) -> float:
    """The rate of ``lrs`` with the lowest final validation RMSE in ``val`` (ties: the smaller)."""
    return min(lrs, key=lambda r: (val[r], r))


def before_relu(depth: int, features: int) -> tuple[int, ...]:
    """The cut positions (``splitfx train --cuts``) that end ``MLP``'s blocks at each layer's Linear, so
    that FFR's heads read the layers' pre-activations and each next block starts with the ReLU."""
    x, y = torch.zeros(2, features), torch.zeros(2)
    points = [f"layers.{i}.fc" for i in range(depth - 1)]
    return cut_positions(plan(MLP(features, 256, depth), x, split_points=points, recipe="ffr", example_target=y))


def _line(kind: str, table: dict, **fields) -> Record:
    return {"kind": kind, **fields, "protocol": table, **provenance()}


def errors(table: dict, results: str, log: Callable[[str], None]) -> None:
    """The learning-rate search and the seeds' test errors of every (data, recipe) not yet in ``results``."""
    table = table["errors"]
    mine = [r for r in read_records(results, key="kind") if r["protocol"] == table and r["kind"] != "bench"]
    for data in table["data"]:
        for recipe in RECIPES:
            done = [r for r in mine if r["data"] == data and r["recipe"] == recipe]
            val = {r["lr"]: r["val_rmse"] for r in done if r["kind"] == "search"}
            for lr in table["lrs"]:
                if lr not in val:
                    result = train(config(data, recipe, lr, 0, table), log=lambda _: None, progress=False)
                    val[lr] = result.history[-1].rmse
                    append_record(results, _line("search", table, data=data, recipe=recipe, lr=lr, val_rmse=val[lr]))
                    log(f"{data} {recipe} lr {lr:g}: validation RMSE {val[lr]:.4g}")
            lr = chosen_lr(val, table["lrs"])
            tested = {r["seed"] for r in done if r["kind"] == "test"}
            for seed in range(table["seeds"]):
                if seed in tested:
                    continue
                began = time.perf_counter()
                result = train(config(data, recipe, lr, seed, table), log=lambda _: None, progress=False)
                test = test_errors(result)
                append_record(results, _line("test", table, data=data, recipe=recipe, lr=lr, seed=seed,
                                             rmse=test.rmse, mae=test.mae, val_rmse=result.history[-1].rmse,
                                             seconds=time.perf_counter() - began))
                log(f"{data} {recipe} lr {lr:g} seed {seed}: test {test}")


def splits(table: dict, results: str, log: Callable[[str], None]) -> None:
    """Each method at the rate its validation search chose, on ``count`` random train/test splits of
    ``data`` (split S trained from seed S on all of its training samples), not yet in ``results``:
    paired by split, the comparison one split of 88 test patients cannot make."""
    part, errors_table = table["splits"], table["errors"]
    records = list(read_records(results, key="kind"))
    mine = [r for r in records if r["kind"] == "split" and r["protocol"] == part]
    for recipe in RECIPES:
        val = {r["lr"]: r["val_rmse"] for r in records if r["kind"] == "search" and r["protocol"] == errors_table
               and r["data"] == part["data"] and r["recipe"] == recipe}
        if set(val) != set(errors_table["lrs"]):
            continue  # the search (errors) comes first
        lr, done = chosen_lr(val, errors_table["lrs"]), {r["split"] for r in mine if r["recipe"] == recipe}
        for split in range(part["count"]):
            if split not in done:
                result = train(config(part["data"], recipe, lr, split, errors_table, split), log=lambda _: None,
                               progress=False)
                test = test_errors(result)
                append_record(results, _line("split", part, data=part["data"], recipe=recipe, lr=lr, split=split,
                                             rmse=test.rmse, mae=test.mae))
                log(f"{part['data']}@{split} {recipe} lr {lr:g}: test {test}")


def memory_and_time(table: dict, results: str, log: Callable[[str], None]) -> None:
    """``splitfx bench`` of backprop against FFR at every depth and size not yet in ``results``."""
    table = table["bench"]
    done = {(r["depth"], r["width"], r["batch"]) for r in read_records(results, key="kind")
            if r["kind"] == "bench" and r["protocol"] == table}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine's other work must not stall a thread pool
    try:
        for depth in table["depths"]:
            for width, batch in table["sizes"]:
                if (depth, width, batch) in done:
                    continue
                result = bench.run(lambda d=depth, w=width: MLP(10, w, d), f"MLP {depth}×{width}", depth,
                                   recipe="ffr", batch=batch, input_size=(10,), steps=table["steps"], floor=True)
                e2e, local, floor = result.modes[0], result.modes[-2], result.modes[-1]
                line = _line("bench", table, depth=depth, width=width, batch=batch, blocks=result.blocks,
                             e2e_saved_bytes=e2e.peak_saved_bytes, ffr_saved_bytes=local.peak_saved_bytes,
                             saved_ratio=local.peak_saved_bytes / e2e.peak_saved_bytes, e2e_ms=e2e.step_ms,
                             ffr_ms=local.step_ms, time_ratio=local.step_ms / e2e.step_ms, floor_ms=floor.step_ms,
                             floor_ratio=floor.step_ms / e2e.step_ms,
                             e2e_step_peak_bytes=e2e.step_peak_bytes, ffr_step_peak_bytes=local.step_peak_bytes)
                append_record(results, line)
                log(f"depth {depth}, width {width}, batch {batch}: saved activations {line['saved_ratio']:.3f}× "
                    f"backprop's, step time {line['time_ratio']:.2f}× (no heads: {line['floor_ratio']:.2f}×)")
    finally:
        torch.set_num_threads(threads)


def report(table: dict, results: str) -> str:
    """The markdown tables of every line of ``table`` in ``results``."""
    lines = [r for r in read_records(results, key="kind")
             if r["protocol"] == table["bench" if r["kind"] == "bench" else "errors"]]
    tests = [r for r in lines if r["kind"] == "test"]
    out = ["| data | FFR | backprop RMSE | FFR RMSE | FFR ÷ backprop (paired mean) | backprop MAE | FFR MAE | "
           "lr backprop / FFR | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for data in table["errors"]["data"]:
        runs = {recipe: {r["seed"]: r for r in tests if r["data"] == data and r["recipe"] == recipe}
                for recipe in RECIPES}
        for variant, cut in (("ffr", "after each ReLU"), ("ffr_pre", "before each ReLU")):
            seeds = sorted(set(runs["e2e"]) & set(runs[variant]))
            if not seeds:
                continue
            e2e, ffr = ([runs[m][s] for s in seeds] for m in ("e2e", variant))
            ratio = statistics.mean(b["rmse"] / a["rmse"] for a, b in zip(e2e, ffr, strict=True))
            out.append(f"| {data} | cuts {cut} | {_sd([r['rmse'] for r in e2e])} | {_sd([r['rmse'] for r in ffr])} | "
                       f"{ratio:.3f} | {_sd([r['mae'] for r in e2e])} | {_sd([r['mae'] for r in ffr])} | "
                       f"{e2e[0]['lr']:g} / {ffr[0]['lr']:g} | {len(seeds)} |")
    out += ["", f"Over random train/test splits of {table['splits']['data']} (each method at its chosen rate, "
            "split S trained from seed S on all its training samples; 95 % t-intervals, the ratio paired by split):",
            "", "| data | FFR | splits | backprop RMSE | FFR RMSE | FFR ÷ backprop (paired) |",
            "|---|---|---|---|---|---|"]
    split_runs = [r for r in read_records(results, key="kind") if r["kind"] == "split"
                  and r["protocol"] == table["splits"]]
    by = {recipe: {r["split"]: r["rmse"] for r in split_runs if r["recipe"] == recipe} for recipe in RECIPES}
    for variant, cut in (("ffr", "after each ReLU"), ("ffr_pre", "before each ReLU")):
        common = sorted(set(by["e2e"]) & set(by[variant]))
        if common:
            e2e, ffr = [by["e2e"][s] for s in common], [by[variant][s] for s in common]
            ratio = t_interval([b / a for a, b in zip(e2e, ffr, strict=True)])
            out.append(f"| {table['splits']['data']} | cuts {cut} | {len(common)} | {t_interval(e2e).shown(2)} | "
                       f"{t_interval(ffr).shown(2)} | {ratio.shown()} |")
    out += ["", "| depth | width × batch | K | saved activations: backprop → FFR | ÷ | step time: backprop → FFR | ÷ "
            "| no heads ÷ |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in lines if r["kind"] == "bench"), key=lambda r: (r["depth"], r["width"])):
        out.append(f"| {r['depth']} | {r['width']} × {r['batch']} | {r['blocks']} | "
                   f"{r['e2e_saved_bytes'] / 2**20:.2f} → {r['ffr_saved_bytes'] / 2**20:.2f} MiB | "
                   f"{r['saved_ratio']:.3f} | {r['e2e_ms']:.1f} → {r['ffr_ms']:.1f} ms | {r['time_ratio']:.2f} | "
                   f"{r['floor_ratio']:.2f} |")
    where = {(r["commit"], r["machine"]) for r in (*lines, *split_runs)}
    out += ["", "Recorded at " + "; ".join(f"commit {c} on {m}" for c, m in sorted(where)) + "."]
    return "\n".join(out) + "\n"


def _sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {sd:.2g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitfx.programs.ffr_results", description=__doc__.split("\n")[0])
    p.add_argument("--results", default="ffr.jsonl", help="JSON-lines file runs are appended to (and resumed from)")
    p.add_argument("--out", help="also write the tables to this markdown file")
    p.add_argument("--quick", action="store_true", help="a few epochs and steps: check that it runs")
    p.add_argument("--report", action="store_true", help="run nothing: the tables from --results alone")
    args = p.parse_args(argv)
    table = protocol(args.quick)
    if not args.report:
        torch.set_num_threads(1)
        errors(table, args.results, print)
        splits(table, args.results, print)
        memory_and_time(table, args.results, print)
    text = report(table, args.results)
    print(text)
    if args.out:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
