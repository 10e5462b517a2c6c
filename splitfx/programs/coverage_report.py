"""The coverage report, made from a results file alone (``splitfx coverage --report FILE``).

Every model of ``timm.list_models()`` is in the denominator: a model with no line in the file counts
as "not run", never as left out, and a model timm's own fx tracer cannot trace is a failure at
``timm_fx``. Per model and stage, the last line for the installed timm version that ran the stage
counts (:func:`merged`): a rerun of some stages (``--stages chain``, after the chain check changed)
replaces those stages' results and keeps the others'. A model passes when every stage of
:data:`~.coverage.STAGES` passed.
"""
from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..base.errors import plain
from ..base.jsonl import Record, read_records
from .coverage import BLOCKS, SAVES, SPLITFX_STAGES, STAGES, family
from .coverage_causes import CAUSES, Cause, cause_of

OUTCOMES = ("pass", "fail", "timeout", "crash", "partial", "not run")
TROUBLE = ("fail", "timeout", "crash")
LABELS = {"fail": "fail", "timeout": "time out", "crash": "crash",
          "partial": "passed only the stages they were run with", "not run": "not run"}


def outcome(record: Record | None) -> str:
    """``pass`` (every stage), ``partial`` (every stage it was run with, not all), else the record's status."""
    if record is None:
        return "not run"
    if record.get("status") == "pass" and not set(STAGES) <= set(record.get("requested", ())):
        return "partial"
    return record.get("status", "fail")


def merged(earlier: Record | None, later: Record) -> Record:
    """One model's record over two runs: each stage's result from the later run that ran it, the
    plans of the later run that planned, and the outcome recomputed from the merged stages (a later
    run that timed out or crashed keeps that status). ``requested`` becomes the stages with a result:
    a stage neither run reached (skipped after a failure, or past a crash) has not passed, so a model
    missing one counts as partial, never as passing."""
    if earlier is None:
        return later
    stages = {**earlier.get("stages", {}), **later.get("stages", {})}
    record = {**later, "stages": stages, "plans": later.get("plans") or earlier.get("plans", {}),
              "requested": [s for s in STAGES if s in stages],
              "seconds": (earlier.get("seconds") or 0.0) + (later.get("seconds") or 0.0)}
    if later.get("status") in ("pass", "fail"):
        bad = next((s for s in STAGES if stages.get(s, {}).get("status", "pass") != "pass"), None)
        status = "pass" if bad is None else stages[bad]["status"]
        record.update(status=status if status in TROUBLE else "fail" if bad else "pass", stage=bad,
                      reason=stages[bad].get("reason", "") if bad else "")
    return record


def _passes(record: Record | None, stages: Iterable[str]) -> bool:
    return record is not None and all(record.get("stages", {}).get(s, {}).get("status") == "pass" for s in stages)


def _cell(text: Any) -> str:
    return " ".join(plain(str(text)).split()).replace("|", "\\|")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "–"


def _balance_cells(records: list[Record], k: int) -> list[str]:
    figures = [r["plans"][str(k)] for r in records if str(k) in (r.get("plans") or {})]
    fewer = sum(f["k"] < k for f in figures)
    return [f"{len(figures)}" + (f" ({fewer} at K<{k})" if fewer else ""),
            _median([f["local_over_e2e"] for f in figures]), _median([f["floor_ratio"] for f in figures])]


def _failures(zoo: list[str], chosen: dict[str, Record], families: dict[str, str]) -> list[list[Any]]:
    """One row per stage that did not pass, and one for a model that failed before any stage began."""
    rows = []
    for name in zoo:
        record = chosen.get(name)
        if record is None or outcome(record) in ("pass", "partial"):
            continue
        bad = [(s, r) for s, r in record.get("stages", {}).items() if r.get("status") != "pass"]
        bad = bad or [(record.get("stage") or "–", record)]
        rows += [[name, families[name], stage, r.get("status"), r.get("reason", ""),
                  _label(cause_of(stage, r.get("status"), plain(r.get("reason") or "")))] for stage, r in bad]
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(rows, key=lambda row: (order.get(row[2], -1), row[0]))


UNDIAGNOSED = "not yet diagnosed"


def _label(cause: Cause | None) -> str:
    return f"{cause.label} ({cause.kind})" if cause else UNDIAGNOSED


def _causes(failures: list[list[Any]]) -> list[str]:
    """Each cause with its failing models counted and what it is; then the undiagnosed count."""
    models = {label: {row[0] for row in failures if row[5] == label} for label in {row[5] for row in failures}}
    rows = [[c.label, c.kind, f"{len(models[_label(c)]):,}", c.detail] for c in CAUSES if _label(c) in models]
    rows.append([UNDIAGNOSED, "–", f"{len(models.get(UNDIAGNOSED, ())):,}", "see each reason below"])
    return _table(["cause", "kind", "models", "what it is"], rows)


def markdown(records: Iterable[Record], zoo: Iterable[str], timm_version: str, *, source: str = "",
             command: str = "", families: dict[str, str] | None = None) -> str:
    """The report over ``zoo`` (every model name of the installed timm) from ``records``."""
    zoo = sorted(set(zoo))
    families = families or {name: family(name) for name in zoo}
    chosen: dict[str, Record] = {}
    counted: list[Record] = []
    other = 0
    for record in records:
        if record.get("versions", {}).get("timm") == timm_version and record["model"] in families:
            chosen[record["model"]] = merged(chosen.get(record["model"]), record)
            counted.append(record)
        else:
            other += 1
    count = Counter(outcome(chosen.get(name)) for name in zoo)
    total = len(zoo)
    splitfx_ok = [name for name in zoo if _passes(chosen.get(name), SPLITFX_STAGES)]
    timm_fx_failed = sum(not _passes(chosen.get(name), ["timm_fx"]) for name in splitfx_ok)
    parts = ", ".join(f"{count[o]:,} {label}" for o, label in LABELS.items())
    lines = [f"# timm zoo coverage: {count['pass']:,} / {total:,} models pass every stage "
             f"({100 * count['pass'] / max(total, 1):.1f} %); {parts} (timm {timm_version})", ""]
    lines += [f"The denominator is every model of `timm.list_models()` in timm {timm_version} ({total:,}). A model "
              "with no line in the results file counts as *not run*. A model timm's own fx tracer cannot trace "
              "fails at `timm_fx` with timm's reason, and splitfx's own stages still run on it: "
              f"**{len(splitfx_ok):,} / {total:,} pass every stage but `timm_fx`**, {timm_fx_failed:,} of them "
              "although `timm_fx` fails.", ""]
    lines += [f"A pass means every stage passed: the K=4 plan keeps at most {SAVES:.2f}× of end-to-end training's "
              "saved activations (`saves`), one local step reached exactly the parameters each loss should train, "
              "observed by gradient hooks (`isolation`), the blocks run one after another equal the model in eval "
              "mode (`chain`), and the ONNX export matches onnxruntime (`onnx`). A model whose lines predate a "
              "stage has not passed it: it counts under *passed only the stages they were run with*.", ""]
    lines += _provenance(counted, other, source, command)
    lines += ["", "## Stages", ""]
    stage_counts = {s: Counter(r.get("stages", {}).get(s, {}).get("status") for r in chosen.values()) for s in STAGES}
    lines += _table(["stage", "pass", "fail", "timeout", "crash", "not reached"],
                    [[s, *(f"{stage_counts[s][o]:,}" for o in ("pass", *TROUBLE)),
                      f"{total - sum(stage_counts[s][o] for o in ('pass', *TROUBLE)):,}"] for s in STAGES])
    by_family: dict[str, list[str]] = {}
    for name in zoo:
        by_family.setdefault(families[name], []).append(name)
    lines += ["", "## Families", ""]
    lines += _table(["family", "models", *OUTCOMES],
                    [[fam, len(names), *(sum(outcome(chosen.get(n)) == o for n in names) for o in OUTCOMES)]
                     for fam, names in sorted(by_family.items())])
    lines += ["", "## How evenly each family splits", "",
              "Medians over the models with a plan, from the planner's prediction at batch 2: *local/E2E* is the "
              "largest block's saved activations over end-to-end training's, *floor* is that times K "
              "(1.00: K equal blocks). A model with fewer legal cuts is planned at the largest K it allows.", ""]
    header = ["family"] + [f"{head} K={k}" for k in BLOCKS for head in ("plans", "local/E2E", "floor")]
    rows = [[fam, *(c for k in BLOCKS for c in _balance_cells([chosen[n] for n in names if n in chosen], k))]
            for fam, names in sorted(by_family.items())]
    rows.append(["**all**", *(c for k in BLOCKS for c in _balance_cells(list(chosen.values()), k))])
    lines += _table(header, rows)
    failures = _failures(zoo, chosen, families)
    lines += ["", "## Causes", "",
              "Where each failure's fix lies: *machine* (memory or time where the sweep ran), *upstream* "
              "(timm, torch.fx or an exporter), *model* (its own state), *splitfx*. A model can count under "
              "two causes when two of its stages failed.", ""]
    lines += _causes(failures)
    lines += ["", f"## Failures ({len(failures):,} stages of "
              f"{sum(count[o] for o in TROUBLE):,} models)", ""]
    lines += _table(["model", "family", "stage", "status", "reason", "cause"], failures)
    return "\n".join(lines) + "\n"


def _provenance(chosen: list[Record], other: int, source: str, command: str) -> list[str]:
    """Which commands and versions produced the results, and what the report left out of the file."""
    lines = [f"Generated by `{command}`." if command else f"Generated from `{source}`."] if command or source else []
    commands = Counter(r.get("command") or "(not recorded)" for r in chosen)
    if commands:
        lines += ["", "Results from " + "; ".join(f"`{c}` ({n:,} lines)" for c, n in commands.most_common(20))
                  + (f"; and {len(commands) - 20} more commands" if len(commands) > 20 else "") + "."]
        seen = Counter(f"torch {r['versions'].get('torch')}, splitfx {r['versions'].get('splitfx')}, commit "
                       f"{r.get('commit') or '(not recorded)'}" for r in chosen)
        machines = Counter(r.get("machine") or "(not recorded)" for r in chosen)
        seconds = [r.get("seconds") or 0.0 for r in chosen]
        lines += ["", "Versions: " + "; ".join(f"{v} ({n:,} lines)" for v, n in seen.most_common()) + ". "
                  "Machines: " + "; ".join(f"{m} ({n:,} lines)" for m, n in machines.most_common()) + ". "
                  f"{sum(seconds) / 3600:.1f} model-hours, median {statistics.median(seconds):.0f} s per line."]
    if other:
        lines += ["", f"Not counted: {other:,} line(s) of the file for another timm version or a model it does not "
                  "list."]
    return lines


def from_file(path: str | os.PathLike, command: str = "") -> str:
    """The report for the installed timm's whole model list from the results file ``path``."""
    import timm

    return markdown(read_records(path), timm.list_models(), timm.__version__, source=os.fspath(path), command=command)
