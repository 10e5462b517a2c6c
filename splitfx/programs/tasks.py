"""``splitfx tasks``: local learning beyond classification, on the embedded tasks of :mod:`.task_data`.

Each run trains one model of :mod:`splitfx.models.tasks` end to end (one block) or at K blocks with a
recipe, from one seed, and scores it on the task's test set with the task's metric; the aux heads
are the ones the task's output calls for (:mod:`splitfx.recipes.predict`) and every loss is the
task's default (cross-entropy per pixel or per token, L1 for images, MSE for values). Results are
appended to a JSON-lines file, one line per run with commit, command and machine, and runs already
in it are skipped, so a sweep can be stopped and resumed.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..api.conversion import convert
from ..base.jsonl import append_record, read_records
from ..base.provenance import one_code, provenance
from ..models.tasks import EDSR, CharGPT, MLPRegressor, SegNet
from ..runtime.split_module import SplitModule
from . import task_data
from .accuracy_stats import t_interval
from .task_data import TaskData


@dataclass(frozen=True)
class TaskSpec:
    """One embedded task: its data, its model, its metric (``higher``: larger is better) and the
    training every run of it gets (AdamW at ``lr``, ``epochs`` epochs of batches of ``batch``)."""

    data: Callable[[], TaskData]
    model: Callable[[TaskData], nn.Module]
    metric: str
    higher: bool
    lr: float
    epochs: int
    batch: int


TASKS: dict[str, TaskSpec] = {
    "shapes": TaskSpec(task_data.shapes, lambda d: SegNet(d.meta["classes"]), "mIoU", True, 3e-3, 8, 64),
    "digits_sr": TaskSpec(task_data.digits_sr, lambda d: EDSR(), "PSNR", True, 1e-3, 30, 32),
    "friedman": TaskSpec(task_data.friedman, lambda d: MLPRegressor(d.meta["features"]), "RMSE", False, 1e-3, 30,
                         64),
    "chars": TaskSpec(task_data.chars, lambda d: CharGPT(d.meta["vocab"]), "perplexity", False, 3e-3, 12, 32),
}


@torch.no_grad()
def score(name: str, sm: SplitModule, data: TaskData, batch: int = 256) -> float:
    """The task's metric on its test set, the model in eval mode."""
    sm.eval()
    x, y = data.test.tensors
    outs = [sm(x[i:i + batch]) for i in range(0, len(x), batch)]
    if name == "shapes":
        counts = [task_data.miou(o, y[i * batch:(i + 1) * batch], data.meta["classes"]) for i, o in enumerate(outs)]
        inter, union = (sum(c[j] for c in counts) for j in (0, 1))
        return float((inter / union.clamp(min=1)).mean()) * 100
    out = torch.cat(outs)
    if name == "digits_sr":
        return task_data.psnr(float(F.mse_loss(out.clamp(0, 1), y)))
    if name == "friedman":
        return math.sqrt(float(F.mse_loss(out, y))) * data.meta["target_std"]
    return math.exp(float(F.cross_entropy(out.flatten(0, -2), y.flatten())))


def run(name: str, blocks: int, recipe: str, seed: int, epochs: int | None = None,
        data: TaskData | None = None) -> dict:
    """Train task ``name`` at ``blocks`` blocks (1: end to end) from ``seed``; its results line."""
    spec = TASKS[name]
    data = data or spec.data()
    x, y = data.train.tensors
    torch.manual_seed(seed)
    model = spec.model(data)
    example = (x[:spec.batch], y[:spec.batch])
    sm = convert(model, example[0], blocks, recipe="e2e" if blocks == 1 else recipe, example_target=example[1])
    opt = torch.optim.AdamW(sm.parameters(), lr=spec.lr)
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    epochs = epochs or spec.epochs
    for _ in range(epochs):
        sm.train()
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x) - spec.batch + 1, spec.batch):  # whole batches only (BatchNorm)
            idx = perm[i:i + spec.batch]
            sm.train_step(x[idx], y[idx], opt)
    plan = sm.plan
    return {"task": name, "metric": spec.metric, "value": score(name, sm, data), "blocks": blocks,
            "recipe": "e2e" if blocks == 1 else recipe, "seed": seed, "epochs": epochs,
            "saved_ratio": plan.local_peak_bytes / plan.e2e_saved_bytes, "local_peak_bytes": plan.local_peak_bytes,
            "e2e_saved_bytes": plan.e2e_saved_bytes, "seconds": time.perf_counter() - start}


def _key(r: dict) -> tuple:
    return r["task"], r["blocks"], r["recipe"], r["seed"], r["epochs"]


def done(path: str | None) -> dict[tuple, dict]:
    """The runs already recorded in ``path``, by (task, blocks, recipe, seed, epochs)."""
    return {_key(r): r for r in read_records(path, key="task")} if path else {}


def sweep(names: list[str], blocks: Sequence[int], recipes: Sequence[str], seeds: int, epochs: int | None,
          out: str | None, progress: Callable[[str], None] = print) -> list[dict]:
    """E2E and every recipe at every K of every task over ``seeds`` seeds (seed-major, so the first
    seeds of every method finish first), skipping the runs in ``out``; every new line appended to
    ``out`` as soon as it is measured."""
    recorded, results = done(out), []
    if recorded:  # resuming: refused before any training where other code made the file's lines
        one_code([*recorded.values(), provenance()])
    methods = list(dict.fromkeys([(1, "e2e"), *((k, r) for r in recipes for k in blocks)]))
    for name in names:
        spec, data = TASKS[name], None
        for seed in range(seeds):
            for k, recipe in methods:
                key = (name, k, recipe, seed, epochs or spec.epochs)
                if key in recorded:
                    results.append(recorded[key])
                    continue
                data = data or spec.data()
                line = {**run(name, k, recipe, seed, epochs, data), **provenance()}
                progress(f"{name} {recipe} K={k} seed {seed}: {spec.metric} {line['value']:.3f}, saved activations "
                         f"{line['saved_ratio']:.2f}× E2E, {line['seconds']:.0f} s")
                if out:
                    append_record(out, line)
                recorded[key] = line
                results.append(line)
    return results


def table(results: list[dict]) -> str:
    """Markdown: per task, recipe and K, the metric's mean with its 95 % t-interval over seeds, the
    ratio to E2E paired by seed (each seed's local metric over its E2E metric) with its interval, ▲/▼
    where that interval lies wholly on the better/worse side of 1, and the saved-activation ratio.
    Raises ValueError when the lines were made by different versions of the code."""
    one_code(results)  # --report: one version of the code per table
    rows = ["| task | metric | E2E | local K, recipe | local | local ÷ E2E (paired) | saved activations ÷ E2E | "
            "seeds |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, dict[int, dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["epochs"], r["blocks"], r["recipe"]), {})[r["seed"]] = r
    for (task, epochs, k, recipe), runs in sorted(groups.items()):
        if k == 1:
            continue
        e2e = groups.get((task, epochs, 1, "e2e"), {})
        seeds = sorted(s for s in set(runs) & set(e2e) if e2e[s]["value"])
        if not seeds:  # nothing to pair with: the row says so rather than vanish
            rows.append(f"| {task} | {runs[min(runs)]['metric']} | – | K={k}, {recipe} | "
                        f"{t_interval([r['value'] for r in runs.values()]).shown()} | no E2E run of the same seed | "
                        f"{runs[min(runs)]['saved_ratio']:.2f} | 0 |")
            continue
        a, b = [e2e[s]["value"] for s in seeds], [runs[s]["value"] for s in seeds]
        ratio = t_interval([v / u for u, v in zip(a, b, strict=True)])
        mark = "" if not ratio.excludes(1.0) else (" ▲" if (ratio.mean > 1) == TASKS[task].higher else " ▼")
        rows.append(f"| {task} | {runs[seeds[0]]['metric']} | {t_interval(a).shown()} | K={k}, {recipe} | "
                    f"{t_interval(b).shown()} | {ratio.shown()}{mark} | {runs[seeds[0]]['saved_ratio']:.2f} | "
                    f"{len(seeds)} |")
    return "\n".join(rows) + "\n"
