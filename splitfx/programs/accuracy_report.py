"""The table and pictures of ``splitfx accuracy``, made from its JSON-lines results file alone.

A table mixes lines only when one version of the splitfx sources trained them all: the lines'
``provenance.code`` digest (decided per line, so lines of different commits whose code is identical
mix). The numbers are :mod:`.accuracy_stats`'.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..base.figures import pyplot, save
from ..base.files import file_stem
from ..base.jsonl import Record
from ..base.provenance import UNRECORDED, one_code
from .accuracy_stats import (
    E2E,
    Cell,
    Interval,
    ordered_variants,
    paired_difference,
    saved_ratio,
    step_ratio,
    summarise,
    training_seconds,
    variant,
)

MARKERS = "osD^v<>ph*"


def markdown(reported: list[Record], blocks: Sequence[int], records: Iterable[Record] = ()) -> str:
    """The caption (protocol, provenance, training time) and, per model, three tables: test accuracy,
    the paired difference to E2E with the chosen rate, and memory ×E2E. ``reported`` are the test lines
    of one protocol; ``records`` (its every line, searches included) adds up the training time, which
    the reported lines give without it. Raises ValueError when different code made the lines, searches
    included: the search chose the rates the test lines ran at."""
    if not reported:
        return "No reported runs yet."
    records = list(records) or reported
    code = _one_code(records)
    cells = summarise(reported)
    out = [_caption(reported, code, records)]
    for model in dict.fromkeys(r["model"] for r in reported):
        out += _tables(model, cells, blocks, reported[0]["protocol"]["seeds"])
    refused = {f"{variant(r)} K={r['blocks']} on {r['model']}": r["reason"] for r in records
               if r.get("phase") == "refused"}
    if refused:
        out += ["", "Cells the planner refused (nothing trained; they show –):", "",
                *(f"- {cell}: {reason}" for cell, reason in refused.items())]
    return "\n".join(out)


def _one_code(records: list[Record]) -> str:
    """The code digest all ``records`` share (:func:`~splitfx.base.provenance.one_code`)."""
    return one_code(r.get("provenance") or {} for r in records)


def _caption(reported: list[Record], code: str, records: list[Record]) -> str:
    p = reported[0]["protocol"]

    def distinct(field: str) -> list[str]:
        return list(dict.fromkeys((r.get("provenance") or {}).get(field) or UNRECORDED for r in reported))

    where = (f"per recipe at K={p['lr_at']} (E2E on its own), then used at every K and for the controls (a "
             "recipe the planner refuses at that K searches at each K)" if p.get("lr_at") else "per cell")
    widen = p.get("widen", 0)
    return (f"Test accuracy of {p['seeds']} seeds per cell at the learning rate chosen {where} on a validation "
            f"split of {100 * p['validation']:g} % of the training images: seed 0 at each rate of the grid "
            f"{', '.join(f'{lr:g}' for lr in p['lrs'])}"
            + (f", extended by up to {widen} rate(s) past an edge while the best rate lies there" if widen else "")
            + f", the best final validation accuracy wins. Data {p['data']} at {p['input_size']}², "
            f"{p['epochs']} epochs, "
            f"batch {p['batch']}{', channels-last' if p.get('channels_last') else ''}, AdamW with weight decay "
            f"{p['weight_decay']:g}, learning rate ×{p['lr_decay']:g} "
            "per epoch; the same protocol for E2E and every recipe. Intervals are 95 % t-intervals over seeds; "
            "differences to E2E are paired by seed (a seed gives every recipe the same initial weights and data "
            f"order).\n\nCode {code[:12]} (digest of the splitfx sources), commit(s) {', '.join(distinct('commit'))}; "
            f"machine(s): {'; '.join(distinct('machine'))}; command(s): "
            f"{'; '.join(f'`{c}`' for c in distinct('command'))}. Training time of the runs in this file: "
            f"{_hours(records)}.")


def _hours(records: list[Record]) -> str:
    """The runs' CPU hours where every run recorded them, else their wall-clock hours, said as such."""
    cpu = training_seconds(records, "cpu")
    if cpu is not None:
        return f"{cpu / 3600:.2f} CPU-hours"
    return (f"{training_seconds(records) / 3600:.2f} hours of wall-clock time summed over runs (one thread each; "
            "more than their CPU time where runs shared a core)")


def _tables(model: str, cells: dict[tuple[str, str, int], Cell], blocks: Sequence[int], seeds: int) -> list[str]:
    """The model's three tables, with columns for the K asked and any other K a recipe trained."""
    mine = [c for c in cells.values() if c.model == model]
    e2e = cells.get((model, E2E, 1))
    ks = sorted(set(blocks) | {c.k for c in mine if c.recipe != E2E})
    rows = ordered_variants(mine)
    one_block = {c.variant for c in mine if c.recipe == E2E}  # E2E and its twins (RepL) train one block

    def table(cell_text: Callable[[Cell], str]) -> list[str]:
        lines = ["", "| variant | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for v in rows:
            found = [cells.get((model, v, 1 if v in one_block else k)) for k in ks]
            lines.append(f"| {v} | " + " | ".join("–" if c is None else cell_text(c) for c in found) + " |")
        return [*lines, ""]

    def difference(c: Cell) -> str:
        lr = f"lr {c.lr:g}{'†' if c.at_edge else ''}"
        if c is e2e:
            return f"reference, {lr}"
        d = paired_difference(c, e2e) if e2e else None
        return f"{_difference(d, seeds)}, {lr}" if d else f"no seed shared with E2E, {lr}"

    def memory(c: Cell) -> str:
        total = step_ratio(c, e2e)
        return f"{saved_ratio(c, e2e):.2f}× / " + ("–" if total is None else f"{total:.2f}×")

    return [f"\n### {model}\n", "Test accuracy (%):", *table(lambda c: _accuracy(c.accuracy, seeds)),
            f"Mean ± half-width of the 95 % t-interval over seeds; (n seeds): a cell with other than {seeds} "
            "seeds (one seed gives no interval). E2E (and its RepL twin) trains one block: its cell is repeated "
            "under every K. "
            "–: not run.", "", "Difference to E2E (points) and chosen learning rate:", *table(difference),
            "Mean of the per-seed differences [95 % t-interval] over the seeds both ran; ▲/▼: the interval lies "
            "above/below 0. †: the chosen rate is at the edge of the cell's searched grid, so the best rate may "
            "lie outside it.", "", "Memory, ×E2E (saved activations / total step peak):", *table(memory),
            "Measured peak saved activations ÷ E2E's (÷ one E2E step of the same model when the table has no "
            "E2E cell) / measured bytes alive at the step's peak (parameters, gradients, optimizer state, "
            "activations, transients) ÷ E2E's; –: not run, or total not measured."]


def _signed(x: float) -> str:
    text = f"{x:+.2f}"
    return "0.00" if float(text) == 0 else text.replace("-", "−")


def _seeds(n: int, seeds: int) -> str:
    return f" ({n} seed{'s' * (n != 1)})" if n != seeds or n == 1 else ""


def _accuracy(a: Interval, seeds: int) -> str:
    return f"{100 * a.mean:.2f}" + ("" if a.half is None else f" ± {100 * a.half:.2f}") + _seeds(a.n, seeds)


def _difference(d: Interval, seeds: int) -> str:
    text = _signed(100 * d.mean)
    if d.half is not None:
        # Marked as the bounds are printed: an interval printed as touching 0.00 is not marked.
        low, high = round(100 * (d.mean - d.half), 2), round(100 * (d.mean + d.half), 2)
        text += f" [{_signed(low)}, {_signed(high)}]"
        text += " ▲" if low > 0 else " ▼" if high < 0 else ""
    return text + _seeds(d.n, seeds)


def figures(reported: list[Record], folder: str, records: Iterable[Record] = ()) -> list[str]:
    """Per model, ``MODEL-accuracy-memory.png`` (test accuracy against measured peak saved activations
    ×E2E) and, when the model has an E2E cell, ``MODEL-gap.png`` (the paired difference to E2E against
    K); MODEL made a file name (:func:`~splitfx.base.files.file_stem`). Returns the paths
    written. Raises ValueError when different code made the lines (``records``: every line of the
    protocol, searches included), as :func:`markdown` does."""
    if not reported:
        return []
    _one_code(list(records) or reported)
    plt, cells, p = pyplot(), summarise(reported), reported[0]["protocol"]
    os.makedirs(folder, exist_ok=True)
    paths = []
    for model in dict.fromkeys(r["model"] for r in reported):
        e2e = cells.get((model, E2E, 1))
        mine = [c for c in cells.values() if c.model == model and c is not e2e]  # E2E's RepL twin included
        colours = {r: plt.cm.tab10(i % 10) for i, r in enumerate(dict.fromkeys(c.recipe for c in mine))}
        fewest = min(c.accuracy.n for c in [*mine, *([e2e] if e2e else [])])
        seeds = f"{p['seeds']} seeds" if fewest == p["seeds"] else f"at least {fewest} of {p['seeds']} seeds so far"
        title = f"{p['data']}, {model}, {seeds}"
        stem = os.path.join(folder, file_stem(model))
        drawn = [("accuracy-memory", _accuracy_memory(plt, mine, e2e, colours, title))]
        if e2e is not None and mine:
            drawn.append(("gap", _gap(plt, mine, e2e, colours, title)))
        for name, fig in drawn:
            paths.append(f"{stem}-{name}.png")
            save(fig, paths[-1])
    return paths


def _accuracy_memory(plt: Any, mine: list[Cell], e2e: Cell | None, colours: dict[str, Any], title: str) -> Any:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    ks = sorted({c.k for c in mine})
    markers = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(ks)}
    for c in mine:
        a, colour = c.accuracy, colours[c.recipe]
        ax.errorbar(saved_ratio(c, e2e), 100 * a.mean, yerr=None if a.half is None else 100 * a.half,
                    fmt=markers[c.k], ms=7, color=colour, mfc="none" if c.control else colour, capsize=3)
    recipes = [Line2D([], [], color=colour, marker="o", ls="", label=r) for r, colour in colours.items()]
    if any(c.control for c in mine):
        recipes.append(Line2D([], [], color="grey", marker="o", mfc="none", ls="",
                              label="hollow: control (no detach /\nuniform cuts) or RepL twin"))
    if e2e is not None:
        a = e2e.accuracy
        ax.axhline(100 * a.mean, color="black", lw=1)
        if a.half is not None:
            ax.axhspan(100 * (a.mean - a.half), 100 * (a.mean + a.half), color="grey", alpha=0.2, lw=0)
        recipes.append(Line2D([], [], color="black", label="E2E (band: 95 % interval)"))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}×"))
    ax.minorticks_off()
    ax.set_xlabel("measured peak saved activations, ×E2E (log scale)")
    ax.set_ylabel("test accuracy (%), mean and 95 % interval over seeds")
    ax.set_title(f"{title}\nx: measured peak saved activations, ×E2E")
    fig.legend(handles=recipes, title="recipe (colour)", loc="outside right upper", fontsize=8)
    if ks:
        fig.legend(handles=[Line2D([], [], color="grey", marker=markers[k], ls="", label=f"K={k}") for k in ks],
                   title="blocks (marker)", loc="outside right lower", fontsize=8)
    return fig


def _gap(plt: Any, mine: list[Cell], e2e: Cell, colours: dict[str, Any], title: str) -> Any:
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    ax.axhline(0, color="black", lw=1)
    variants = ordered_variants(mine)
    for i, v in enumerate(variants):
        line = sorted((c for c in mine if c.variant == v), key=lambda c: c.k)
        points = [(c.k, d) for c in line if (d := paired_difference(c, e2e)) is not None]
        if not points:
            continue
        dodge = 2 ** (0.03 * (i - (len(variants) - 1) / 2))  # side by side, so the interval bars stay apart
        ax.errorbar([k * dodge for k, _ in points], [100 * d.mean for _, d in points],
                    yerr=[0 if d.half is None else 100 * d.half for _, d in points], color=colours[line[0].recipe],
                    marker="o", mfc="none" if line[0].control else None, ls=_dashes(line[0]), capsize=3, label=v)
    ks = sorted({c.k for c in mine})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("blocks K (log₂ scale)")
    ax.set_ylabel("test accuracy − E2E (points), mean and\n95 % interval of the per-seed differences")
    ax.set_title(f"{title}\npaired difference to E2E by seed (dashed: controls, RepL)")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(title="variant", loc="outside right upper", fontsize=8)
    return fig


def _dashes(cell: Cell) -> str | tuple:
    """Solid for a recipe; its controls and its RepL twin dashed, each its own way so they stay apart."""
    if cell.repl:
        return (0, (6, 2, 1, 2, 1, 2))
    return {(True, False): "-", (False, False): "--", (True, True): "-.", (False, True): ":"}[cell.detach, cell.uniform]
