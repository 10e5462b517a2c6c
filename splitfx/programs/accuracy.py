"""``splitfx accuracy``: E2E vs every recipe at several K on the same data, epochs and seed."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ..recipes import create_recipe
from .config import options_for, with_all_options
from .train import TrainConfig, train


def run(
    models: Sequence[str],
    recipes: Sequence[str],
    blocks: Sequence[int],
    base: TrainConfig,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One training run per (model, recipe, K); a recipe that does not split (``e2e``) runs once per model.
    Each recipe gets the options of ``base.recipe_options`` that it takes."""
    rows = []
    for model in models:
        for recipe in recipes:
            for k in (blocks if create_recipe(recipe).split else [1]):
                config = with_all_options(replace(base, model=model, recipe=recipe, blocks=k,
                                                  recipe_options=options_for(recipe, base.recipe_options)))
                result = train(config, log=lambda _: None)
                last = result.history[-1]
                rows.append({
                    "model": model, "recipe": recipe, "blocks": result.trained_blocks,
                    "accuracy": last.test_accuracy,
                    "peak_saved_mib": max(h.peak_saved_bytes for h in result.history) / 2**20,
                    "e2e_saved_mib": result.e2e_saved_bytes / 2**20,
                    "seconds_per_epoch": sum(h.seconds for h in result.history) / len(result.history),
                })
                log(f"{model:>24} {recipe:>15} K={result.trained_blocks}: {100 * last.test_accuracy:.2f} %")
    return rows


def markdown(rows: list[dict], blocks: Sequence[int]) -> str:
    """Per model: one row per recipe, test accuracy (and peak saved MiB) per K."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        e2e = next((r for r in mine if r["recipe"] == "e2e"), None)
        out.append(f"### {model}\n")
        out.append("| recipe | " + " | ".join(f"K={k}" for k in blocks) + " |")
        out.append("|---|" + "---|" * len(blocks))
        for recipe in dict.fromkeys(r["recipe"] for r in mine):
            cells = []
            for k in blocks:
                hit = [r for r in mine if r["recipe"] == recipe and (r["blocks"] == k or recipe == "e2e")]
                cells.append(f"{100 * hit[0]['accuracy']:.2f} % ({hit[0]['peak_saved_mib']:.1f} MiB)" if hit else "–")
            out.append(f"| {recipe} | " + " | ".join(cells) + " |")
        if e2e is not None:
            out.append(f"\nE2E saves {e2e['peak_saved_mib']:.1f} MiB of activations per step.\n")
    return "\n".join(out)
