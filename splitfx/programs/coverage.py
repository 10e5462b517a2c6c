"""``splitfx coverage``: how much of the timm zoo survives every stage, one process per model.

Stages, in order: ``create`` (random weights), ``timm_fx`` (timm's own fx tracer: models it cannot
trace are reported as excluded, not failed), ``trace``, ``plan`` (K=4, or fewer when the model has
fewer legal cuts), ``convert``, ``step`` (one local training step, finite losses), ``parity`` (eval
outputs ``torch.equal`` to the original), ``onnx`` (export + onnxruntime parity). Each model runs in
its own Python process under a time limit so one crash or hang cannot stop the sweep.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ..base.errors import first_line

STAGES = ("create", "timm_fx", "trace", "plan", "convert", "step", "parity", "onnx")


@dataclass
class Outcome:
    model: str
    family: str
    status: str  # pass | fail | timeout | excluded
    stage: str | None = None  # the failing stage
    reason: str = ""
    seconds: float = 0.0


def family(name: str) -> str:
    """timm's module for the model (``resnet``, ``vision_transformer``, ...)."""
    import timm.models._registry as registry

    return registry._model_to_module.get(name.split(".")[0], "?")


def check(name: str, blocks: int = 4, onnx_dir: str | None = None) -> Outcome:
    """Run every stage on ``name`` in this process; the first failing stage ends it."""
    import tempfile

    import timm
    import torch

    from ..api.conversion import convert
    from ..api.onnx_export import export_onnx
    from ..api.planning import plan as make_plan
    from ..base.errors import PlanError
    from ..passes.trace import trace
    from .models import default_input_size

    outcome = Outcome(name, family(name), "pass")
    began = time.perf_counter()
    stage = "create"
    try:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10)
        x = torch.randn(2, *default_input_size(model))
        y = torch.randint(0, 10, (2,))
        stage = "timm_fx"
        try:
            timm.layers.get_graph_node_names(model)
        except Exception as err:
            outcome.status, outcome.stage, outcome.reason = ("excluded", stage,
                                                             f"timm cannot fx-trace it: {first_line(err)}")
            return outcome
        stage = "trace"
        trace(model, (x,))
        stage = "plan"
        try:
            plan = make_plan(model, x, blocks)
        except PlanError as err:
            if err.max_blocks is None:
                raise
            plan = make_plan(model, x, err.max_blocks)
        stage = "convert"
        sm = convert(model, x, plan=plan)
        stage = "step"
        opt = torch.optim.SGD(sm.parameters(), lr=1e-3)
        losses = sm.train_step(x, y, opt)
        if not all(math.isfinite(v) for v in losses):
            raise AssertionError(f"non-finite local losses {losses}")
        stage = "parity"
        sm.eval()
        with torch.no_grad():
            if not torch.equal(sm(x), model(x)):
                raise AssertionError("eval outputs differ from the original model")
        stage = "onnx"
        with tempfile.TemporaryDirectory(dir=onnx_dir) as tmp:
            export_onnx(sm, os.path.join(tmp, "m.onnx"), x)
    except Exception as err:
        outcome.status, outcome.stage, outcome.reason = "fail", stage, first_line(err)
    finally:
        outcome.seconds = time.perf_counter() - began
    return outcome


def _run_isolated(name: str, timeout: float) -> Outcome:
    began = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        proc = subprocess.run([sys.executable, "-m", "splitfx.programs.coverage", name], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(name, family(name), "timeout", None, f"over {timeout:.0f} s", time.perf_counter() - began)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return Outcome(**json.loads(line))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Outcome(name, family(name), "fail", "crash", f"exit {proc.returncode}: {tail[:300]}",
                   time.perf_counter() - began)


def sweep(names: Iterable[str], jobs: int, timeout: float, progress: Callable[[Outcome], None]) -> list[Outcome]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_isolated, n, timeout) for n in names]
        results = []
        for f in futures:
            results.append(f.result())
            progress(results[-1])
    return results


def select(pattern: str) -> list[str]:
    import timm

    return [n for n in timm.list_models() if fnmatch.fnmatch(n, pattern)]


def report(results: list[Outcome], header: str) -> str:
    """Markdown: summary, per family, and every model not passing with its stage and reason."""
    traceable = [r for r in results if r.status != "excluded"]
    passed = [r for r in traceable if r.status == "pass"]
    lines = [header, "", f"{len(results)} models; {len(results) - len(traceable)} excluded (timm itself cannot "
             f"fx-trace them); **{len(passed)} / {len(traceable)} traceable models pass every stage "
             f"({100 * len(passed) / max(len(traceable), 1):.1f} %)**.", "",
             "| family | models | excluded | pass | fail | timeout |", "|---|---|---|---|---|---|"]
    families: dict[str, list[Outcome]] = {}
    for r in results:
        families.setdefault(r.family, []).append(r)
    for fam in sorted(families):
        rs = families[fam]
        count = {s: sum(r.status == s for r in rs) for s in ("excluded", "pass", "fail", "timeout")}
        lines.append(f"| {fam} | {len(rs)} | {count['excluded']} | {count['pass']} | {count['fail']} "
                     f"| {count['timeout']} |")
    lines += ["", "| model | family | status | stage | reason |", "|---|---|---|---|---|"]
    for r in results:
        if r.status != "pass":
            lines.append(f"| {r.model} | {r.family} | {r.status} | {r.stage or ''} | {r.reason.replace('|', '/')} |")
    return "\n".join(lines)


def main_one(name: str) -> None:
    print(json.dumps(asdict(check(name))), flush=True)


if __name__ == "__main__":
    main_one(sys.argv[1])
