"""The accuracy table and its pictures, made from the results file of ``splitfx accuracy`` alone.

A cell is mean ± sample standard deviation of test accuracy over seeds at the validation-picked rate.
A recipe's cell is marked when its mean differs from E2E's by more than the two spreads together
(▲ above, ▼ below); unmarked differences are within the seeds' noise.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Sequence

from ..base.figures import pyplot, save
from ..base.jsonl import Record


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(reported: Iterable[Record]) -> dict[tuple[str, str, int], dict]:
    """Per (model, recipe, K): test mean/std (fractions), seeds, chosen rate, peak saved MiB, mean
    validation curve, training hours."""
    groups: dict[tuple[str, str, int], list[Record]] = {}
    for r in reported:
        groups.setdefault((r["model"], r["recipe"], r["trained_blocks"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        mean, std = _mean_std([r["test"] for r in rows])
        epochs = len(rows[0]["val"])
        out[key] = {
            "mean": mean, "std": std, "seeds": len(rows), "lr": rows[0]["lr"],
            "peak_saved_mib": statistics.fmean(r["peak_saved_mib"] for r in rows),
            "val": [statistics.fmean(r["val"][e] for r in rows) for e in range(epochs)],
        }
    return out


def _mark(cell: dict, e2e: dict | None) -> str:
    if e2e is None or cell is e2e or abs(cell["mean"] - e2e["mean"]) <= cell["std"] + e2e["std"]:
        return ""
    return " ▲" if cell["mean"] > e2e["mean"] else " ▼"


def markdown(reported: list[Record], blocks: Sequence[int], records: Iterable[Record] = ()) -> str:
    """The caption (protocol, grid, budget, time taken) and one table per model; ``records`` (every
    line, searches included) only adds up the time."""
    if not reported:
        return "No reported runs yet."
    table = reported[0]["protocol"]
    seconds = sum(r["wall_seconds"] for r in records or reported)
    took = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    stats = summarise(reported)
    out = [f"{table['seeds']} seeds per cell (mean ± standard deviation of test accuracy); learning rate picked "
           f"per recipe and K on a validation split of {table['validation']:.0%} of the training images from the "
           f"grid {', '.join(f'{lr:g}' for lr in table['lrs'])} (AdamW, weight decay {table['weight_decay']}, "
           f"×{table['lr_decay']} per epoch; seed 0 at each rate, best final validation accuracy), then test "
           f"accuracy read once per seed at that rate. {table['epochs']} epochs, batch {table['batch']}, data "
           f"{table['data']} at {table['input_size']}², the same grid and budget for E2E and every recipe. "
           f"▲/▼: mean above/below E2E's by more than the two standard deviations together. Training time "
           f"of the runs in this file: {took} (one thread each). Brackets: chosen rate, measured peak "
           "saved activations."]
    for model in dict.fromkeys(r["model"] for r in reported):
        e2e = stats.get((model, "e2e", 1))
        out += [f"\n### {model}\n", "| recipe | " + " | ".join(f"K={k}" for k in blocks) + " |",
                "|---|" + "---|" * len(blocks)]
        for recipe in dict.fromkeys(r["recipe"] for r in reported if r["model"] == model):
            cells = []
            for k in blocks:
                cell = e2e if recipe == "e2e" else stats.get((model, recipe, k))
                cells.append("–" if cell is None else
                             f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}{_mark(cell, e2e)} "
                             f"({cell['lr']:g}, {cell['peak_saved_mib']:.1f} MiB)")
            out.append(f"| {recipe} | " + " | ".join(cells) + " |")
        if e2e is not None:
            out.append(f"\nE2E (K=1, repeated in each column) saves {e2e['peak_saved_mib']:.1f} MiB of activations "
                       "per step.")
    return "\n".join(out)


def figures(reported: list[Record], folder: str, curves_at: int = 4) -> list[str]:
    """Per model: ``MODEL-accuracy-memory.png`` (test accuracy vs measured peak saved activations, one
    point per recipe and K with its spread, E2E as the reference) and ``MODEL-validation.png`` (mean
    validation accuracy per epoch of every recipe at K=``curves_at`` and of E2E). Returns the paths."""
    plt = pyplot()
    stats = summarise(reported)
    paths = []
    os.makedirs(folder, exist_ok=True)
    for model in dict.fromkeys(r["model"] for r in reported):
        mine = {k: v for k, v in stats.items() if k[0] == model}
        recipes = list(dict.fromkeys(k[1] for k in mine))
        colours = {r: plt.cm.tab10(i % 10) for i, r in enumerate(recipes)}
        markers = dict(zip(sorted({k[2] for k in mine}), "osD^v<>p*h", strict=False))
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for (_, recipe, k), cell in sorted(mine.items()):
            ax.errorbar(cell["peak_saved_mib"], 100 * cell["mean"], yerr=100 * cell["std"], fmt=markers[k],
                        color=colours[recipe], capsize=3, label=f"{recipe} K={k}")
        e2e = mine.get((model, "e2e", 1))
        if e2e is not None:
            ax.axhline(100 * e2e["mean"], color="black", ls="--", lw=0.8, label="E2E mean")
            ax.axhspan(100 * (e2e["mean"] - e2e["std"]), 100 * (e2e["mean"] + e2e["std"]), color="grey", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("measured peak saved activations per step (MiB, log scale)")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        ax.set_title(f"{model}: accuracy against activation memory")
        ax.legend(fontsize=7, ncol=3, loc="lower right")
        fig.tight_layout()
        paths.append(os.path.join(folder, f"{model}-accuracy-memory.png"))
        save(fig, paths[-1])

        fig, ax = plt.subplots(figsize=(8, 5))
        for (_, recipe, k), cell in mine.items():
            if k == curves_at or recipe == "e2e":
                epochs = range(1, len(cell["val"]) + 1)
                ax.plot(epochs, [100 * v for v in cell["val"]], color=colours[recipe], marker=".",
                        label=f"{recipe} (K={k}, lr {cell['lr']:g})", lw=2 if recipe == "e2e" else 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%), mean over seeds")
        ax.set_title(f"{model}: validation accuracy per epoch, K={curves_at} and E2E")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        paths.append(os.path.join(folder, f"{model}-validation.png"))
        save(fig, paths[-1])
    return paths
