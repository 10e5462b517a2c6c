"""The coverage sweep: a killed sweep resumes, shards partition, versions count, the report covers the zoo.

Most tests sweep with tests/fake_check.py as the check (no model is built, workers start in
milliseconds); the last two run the real check on timm's tiny ``test_*`` models up to the plan stage.
"""
import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

import splitfx.api.planning
from splitfx import PlanError
from splitfx.base.jsonl import append_record, read_records
from splitfx.cli import main
from splitfx.cli.options import UsageError
from splitfx.cli.parser import build_parser
from splitfx.programs import sweep
from splitfx.programs.coverage import STAGES, check, with_prerequisites
from splitfx.programs.coverage_causes import cause_of

FAKE = "fake_check:check"
VITS = ["test_vit", "test_vit2", "test_vit3", "test_vit4", "test_vit_relpos"]  # --filter 'test_vit*', sorted


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The folder tests/fake_check.py takes its orders from, and a PYTHONPATH on which workers find it."""
    folder = tmp_path / "fake"
    folder.mkdir()
    monkeypatch.setenv("FAKE_CHECK_DIR", str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    return folder


def _checked(folder: Path) -> Counter:
    """How many times the fake check ran for each model."""
    path = folder / "checked.txt"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def _models(results: Path) -> list[str]:
    return [r["model"] for r in read_records(results)]


def _line(model: str, versions: dict, requested=STAGES, **fields) -> dict:
    return {"model": model, "status": "pass", "stage": None, "reason": "", "seconds": 1.0, "versions": versions,
            "requested": list(requested), "command": "test", "stages": {}, "plans": {}, **fields}


def test_killed_sweep_resumes_without_redoing_finished_models(fake, tmp_path):
    assert sweep.select("test_vit*") == VITS
    results = tmp_path / "coverage.jsonl"
    (fake / "kill-test_vit3").touch()  # the worker for test_vit3 SIGKILLs the sweep while that model is in flight
    argv = [sys.executable, "-m", "splitfx", "coverage", "--filter", "test_vit*", "--check", FAKE,
            "--results", str(results), "--jobs", "1", "--timeout", "120", "--resume"]
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _models(results) == ["test_vit", "test_vit2"], "each finished model is on disk, the one in flight is not"
    resumed = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 models checked" in resumed.stdout and "2 already in" in resumed.stdout
    # Not a terminal: a line per model instead of the bar.
    logged = [line.split(" (")[0].split("] ") for line in resumed.stdout.splitlines() if line.startswith("[")]
    assert [count for count, _ in logged] == ["[1/3", "[2/3", "[3/3"]
    left = sorted(set(VITS) - {"test_vit", "test_vit2"})
    assert sorted(what for _, what in logged) == [f"{name}: pass" for name in left]
    assert sorted(_models(results)) == VITS
    assert _checked(fake) == {**dict.fromkeys(VITS, 1), "test_vit3": 2}, "only the model in flight ran twice"


def test_timeout_crash_and_failure_are_recorded_with_their_stage(fake, tmp_path):
    (fake / "crash-b").touch()
    (fake / "hang-c").touch()
    (fake / "fail-d").write_text("PlanError: no legal cut | anywhere")
    results = tmp_path / "r.jsonl"
    records = sweep.run(["a", "b", "c", "d"], results, ["plan"], jobs=2, timeout=3, check=FAKE, command="test")
    by = {r["model"]: r for r in read_records(results)}
    assert sorted(by) == ["a", "b", "c", "d"] and len(records) == 4
    assert by["a"]["status"] == "pass" and by["a"]["requested"] == ["create", "trace", "plan"]
    assert by["a"]["plans"]["8"]["k"] == 8
    assert (by["b"]["status"], by["b"]["stage"]) == ("crash", "trace") and by["b"]["reason"].startswith("exit 3")
    assert by["b"]["stages"]["create"]["status"] == "pass" and by["b"]["stages"]["trace"]["status"] == "crash"
    assert (by["c"]["status"], by["c"]["stage"]) == ("timeout", "trace") and "3 s limit" in by["c"]["reason"]
    assert (by["d"]["status"], by["d"]["stage"]) == ("fail", "plan")
    assert by["d"]["reason"] == "PlanError: no legal cut | anywhere"
    assert all(r["versions"] == sweep.versions() and r["command"] == "test" for r in by.values())


def test_workers_return_freed_memory_to_the_os_unless_the_user_set_malloc_otherwise(fake, tmp_path, monkeypatch):
    defaults = {"OMP_NUM_THREADS": "1", "SPLITFX_WORKER_MEMORY": str(14 * 2**30),
                "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "1"}
    assert sweep.worker_env({}) == defaults
    mine = {"MALLOC_ARENA_MAX": "4", "OMP_NUM_THREADS": "2", "SPLITFX_WORKER_MEMORY": "0", "HOME": "/home/me"}
    assert sweep.worker_env(mine) == {**defaults, **mine}, "what the user set wins; the rest is passed on"
    for name in defaults:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    sweep.run(["a"], tmp_path / "r.jsonl", ["create"], timeout=60, check=FAKE)
    seen = json.loads((fake / "env-a.json").read_text())
    assert {k: seen.get(k) for k in defaults} == {**defaults, "MALLOC_ARENA_MAX": "2"}


@pytest.mark.skipif(not os.path.exists("/proc/self/oom_score_adj"), reason="Linux's OOM killer")
def test_a_worker_is_what_the_kernel_kills_first_when_memory_runs_out(fake, tmp_path):
    sweep.run(["a"], tmp_path / "r.jsonl", ["create"], timeout=60, check=FAKE)
    assert (fake / "oom-a.txt").read_text() == "1000"
    with open("/proc/self/oom_score_adj") as mine:
        assert int(mine.read()) < 1000, "the sweep itself is not marked"


def test_resume_reuses_only_lines_of_the_same_versions_and_stages(fake, tmp_path):
    results = tmp_path / "r.jsonl"
    here = sweep.versions()
    append_record(results, _line("test_vit", here))
    append_record(results, _line("test_vit2", {**here, "timm": "0.9.0"}))
    append_record(results, _line("test_vit3", {**here, "torch": "2.0.0"}))
    append_record(results, _line("test_vit4", {**here, "splitfx": "0.0.1"}))
    append_record(results, _line("test_vit_relpos", here, requested=["create", "trace", "plan"]))
    assert sweep.remaining(VITS, results, ["plan"]) == ["test_vit2", "test_vit3", "test_vit4"]
    argv = ["coverage", "--filter", "test_vit*", "--check", FAKE, "--results", str(results), "--resume", "-j", "1"]
    assert main(argv) == 0
    assert _checked(fake) == dict.fromkeys(VITS[1:], 1), "other versions and fewer stages are checked again"
    assert main(argv) == 0
    assert _checked(fake) == dict.fromkeys(VITS[1:], 1), "a second resume has nothing left to do"


def test_retry_failed_checks_again_only_models_whose_last_line_failed(fake, tmp_path):
    results = tmp_path / "r.jsonl"
    here = sweep.versions()
    append_record(results, _line("test_vit", here))
    append_record(results, _line("test_vit2", here, status="fail", stage="onnx"))
    append_record(results, _line("test_vit3", here, status="fail", stage="step"))
    append_record(results, _line("test_vit3", here))  # passed when checked again
    append_record(results, _line("test_vit4", here, status="crash"))
    append_record(results, _line("test_vit_relpos", here, status="timeout"))  # ran 1 s: a shorter limit
    assert sweep.remaining(VITS, results, STAGES) == []
    assert sweep.remaining(VITS, results, STAGES, retry_failed=True) == ["test_vit2", "test_vit4", "test_vit_relpos"]
    append_record(results, _line("test_vit_relpos", here, status="timeout", seconds=600.4))
    retried = ["test_vit2", "test_vit4"]
    assert sweep.remaining(VITS, results, STAGES, retry_failed=True, timeout=600) == retried, "the same limit"
    assert sweep.remaining(VITS, results, STAGES, retry_failed=True, timeout=1800) == [*retried, "test_vit_relpos"]
    argv = ["coverage", "--filter", "test_vit*", "--check", FAKE, "--results", str(results), "-j", "1"]
    assert main([*argv, "--retry-failed"]) == 2, "--retry-failed without --resume"
    assert main([*argv, "--resume", "--retry-failed"]) == 0
    assert _checked(fake) == {"test_vit2": 1, "test_vit4": 1}
    assert main([*argv, "--resume", "--retry-failed", "--timeout", "900"]) == 0
    assert _checked(fake) == {"test_vit2": 1, "test_vit4": 1, "test_vit_relpos": 1}


def test_a_line_torn_by_a_crash_leaves_every_whole_line_readable(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"model": "a"})
    with open(path, "a") as f:
        f.write('{"model": "b", "sta')
    append_record(path, {"model": "c"})
    assert _models(path) == ["a", "c"]


def test_shards_partition_the_sorted_list_exactly():
    zoo = timm.list_models()
    assert sweep.select() == sorted(zoo)
    for pattern in ("*", "vit_*"):
        everything = sweep.select(pattern)
        for n in (1, 2, 7):
            shards = [sweep.select(pattern, (i, n)) for i in range(n)]
            assert sorted(name for shard in shards for name in shard) == everything, "the union is the whole list"
            assert sum(map(len, shards)) == len(everything), "no model in two shards"
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
            assert shards == [sweep.select(pattern, (i, n), names=reversed(zoo)) for i in range(n)], "deterministic"
    parser = build_parser()
    assert parser.parse_args(["coverage", "--shard", "2/5"]).shard == (2, 5)
    for bad in ("5/5", "a/2", "1", "-1/2"):
        with pytest.raises(UsageError, match="--shard"):
            parser.parse_args(["coverage", "--shard", bad])


def test_params_ranges_split_the_zoo_into_sweeps_that_do_not_overlap(fake, tmp_path, monkeypatch):
    vit = timm.create_model("test_vit", num_classes=10)
    assert sweep.parameter_count("test_vit") == sum(p.numel() for p in vit.parameters()), "meta count = real count"
    sizes = {"test_vit": 5 * 10**8, "test_vit2": 10, "test_vit3": 10**9, "test_vit4": 2 * 10**9}

    def count(name):
        if name not in sizes:
            raise RuntimeError("cannot build on the meta device")
        return sizes[name]

    small, giant = sweep.sized(VITS, 0, 5e8, count), sweep.sized(VITS, 5e8, math.inf, count)
    assert small == ["test_vit2", "test_vit_relpos"], "uncountable models go with the range that starts at 0"
    assert giant == ["test_vit", "test_vit3", "test_vit4"]
    parse = build_parser().parse_args
    assert parse(["coverage", "--params", ":500M"]).params == (0, 5e8)
    assert parse(["coverage", "--params", "1.5b:"]).params == (1.5e9, math.inf)
    for bad in ("500M", "2B:1B", "x:", "-1:"):
        with pytest.raises(UsageError, match="--params"):
            parse(["coverage", "--params", bad])
    monkeypatch.setattr(sweep, "parameter_count", count)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in sweep.worker_env({}):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPLITFX_WORKER_MEMORY", "0")
    results = tmp_path / "coverage.jsonl"
    assert main(["coverage", "--filter", "test_vit*", "--params", "500M:2B", "--check", FAKE, "--jobs", "1",
                 "--results", str(results)]) == 0
    assert _models(results) == ["test_vit", "test_vit3"]
    assert json.loads(Path(sweep.counts_cache()).read_text()) == {
        n: sizes[n] for n in VITS if n in sizes}, "the CLI keeps the counts, not the failed one, in the user's cache"
    assert {r["command"] for r in read_records(results)} == {
        f"SPLITFX_WORKER_MEMORY=0 splitfx coverage --results {results} --filter 'test_vit*' --params 500M:2B "
        f"--check {FAKE} --jobs 1 --timeout 600"}, "the command shows the worker settings the environment gave"


def test_parameter_counts_are_cached_so_a_restarted_sweep_does_not_count_again(tmp_path):
    sizes, asked = {"test_vit": 5 * 10**8, "test_vit2": 10, "test_vit3": 10**9}, []

    def count(name):
        asked.append(name)
        if name not in sizes:
            raise RuntimeError("cannot build on the meta device")
        return sizes[name]

    cache = tmp_path / "counts" / "parameters.json"
    assert sweep.sized(VITS, 5e8, math.inf, count, cache=cache) == ["test_vit", "test_vit3"]
    assert sorted(asked) == sorted(VITS), "the first sweep counts every model"
    assert json.loads(cache.read_text()) == sizes, "a count that failed is not kept"
    asked.clear()
    assert sweep.sized(VITS, 0, 5e8, count, cache=cache) == ["test_vit2", "test_vit4", "test_vit_relpos"]
    assert sorted(asked) == ["test_vit4", "test_vit_relpos"], "the next counts only what the cache lacks"
    for bad in ("{not json", "[1, 2]", '{"test_vit": "big"}'):
        cache.write_text(bad)
        asked.clear()
        assert sweep.sized(VITS, 5e8, math.inf, count, cache=cache) == ["test_vit", "test_vit3"]
        assert sorted(asked) == sorted(VITS), f"an unreadable cache ({bad}) is counted again, not trusted"
        assert json.loads(cache.read_text()) == sizes, "and rewritten whole"


def test_stages_bring_the_stages_they_need():
    assert with_prerequisites(["plan"]) == ("create", "trace", "plan")
    assert with_prerequisites(["timm_fx"]) == ("create", "timm_fx")
    assert with_prerequisites(["onnx", "timm_fx"]) == ("create", "timm_fx", "trace", "plan", "convert", "step", "onnx")
    assert with_prerequisites(["chain"]) == ("create", "trace", "plan", "convert", "chain")
    assert with_prerequisites(["isolation", "saves"]) == ("create", "trace", "plan", "saves", "convert", "step",
                                                          "isolation")
    assert with_prerequisites(["onnx", "timm_fx", "saves", "isolation", "chain"]) == STAGES
    with pytest.raises(ValueError, match="unknown stage"):
        with_prerequisites(["compile"])


def test_report_counts_the_whole_zoo_and_lists_every_failure(tmp_path):
    zoo, here = timm.list_models(), sweep.versions()
    done = {s: {"status": "pass", "seconds": 1.0} for s in STAGES}

    def plans(floor):
        return {str(k): {"asked": k, "k": k, "local_peak_bytes": 1, "e2e_saved_bytes": 1,
                         "local_over_e2e": floor / k, "floor_ratio": floor} for k in (4, 8)}

    lines = [
        _line("resnet18", here, stages=done, plans=plans(1.2)),
        _line("vit_tiny_patch16_224", here, status="fail", stage="timm_fx", reason="timm cannot fx-trace it: boom",
              stages={**done, "timm_fx": {"status": "fail", "reason": "timm cannot fx-trace it: boom"}},
              plans=plans(2.0)),
        _line("convnext_atto", here, status="fail", stage="convert", reason="RuntimeError: a | b",
              stages={"create": done["create"], "convert": {"status": "fail", "reason": "RuntimeError: a | b"}}),
        _line("levit_128s", here, status="timeout", stage="onnx", reason="over the 600 s limit",
              stages={"onnx": {"status": "timeout", "reason": "over the 600 s limit"}}),
        _line("vit_huge_patch14_224", here, status="fail", stage="step", reason="RuntimeError: can't allocate memory",
              stages={"step": {"status": "fail", "reason": "RuntimeError: \x1b[96mcan't allocate memory\x1b[0m"}}),
        _line("mixer_s16_224", here, status="crash", stage=None, reason="killed by SIGSEGV without an outcome"),
        _line("efficientnet_b0", here, requested=["create", "trace", "plan"]),
        _line("densenet121", {**here, "timm": "0.9.0"}, stages=done),
    ]
    results, out = tmp_path / "r.jsonl", tmp_path / "coverage.md"
    for line in lines:
        append_record(results, line)
    assert main(["coverage", "--report", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    first = text.splitlines()[0]
    assert f"1 / {len(zoo):,} models pass every stage" in first
    for count in ("3 fail", "1 time out", "1 crash", "1 passed only the stages", f"{len(zoo) - 7:,} not run"):
        assert count in first
    assert f"**2 / {len(zoo):,} pass every stage but `timm_fx`**, 1 of them although" in text
    assert f"splitfx coverage --report {results} --out {out}" in text, "the report names its command"
    failures = text.split("## Failures")[1].split("|---|---|---|---|---|---|")[1]
    rows = re.findall(r"^\| (\S+) \| \S+ \| (\S+) \| (\S+) \| (.*) \| (.*) \|$", failures, re.M)
    assert sorted(rows) == sorted([
        ("vit_tiny_patch16_224", "timm_fx", "fail", "timm cannot fx-trace it: boom", "timm fx tracer (upstream)"),
        ("convnext_atto", "convert", "fail", "RuntimeError: a \\| b", "not yet diagnosed"),
        ("levit_128s", "onnx", "timeout", "over the 600 s limit", "time (machine)"),
        ("vit_huge_patch14_224", "step", "fail", "RuntimeError: can't allocate memory", "memory (machine)"),
        ("mixer_s16_224", "–", "crash", "killed by SIGSEGV without an outcome", "not yet diagnosed"),
    ]), "every failure has its reason (colour codes dropped) and its cause"
    causes = text.split("## Causes")[1].split("## Failures")[0]
    counted = dict(re.findall(r"^\| ([\w ]+) \| [\w–]+ \| (\d+) \|", causes, re.M))
    assert counted == {"memory": "1", "time": "1", "timm fx tracer": "1", "not yet diagnosed": "2"}
    families = text.split("## Families")[1].split("##")[0]
    row = r"^\| \w+ \| " + r" \| ".join([r"([\d,]+)"] * 7) + r" \|$"
    counts = [[int(c.replace(",", "")) for c in cells] for cells in re.findall(row, families, re.M)]
    assert sum(row[0] for row in counts) == len(zoo) and all(row[0] == sum(row[1:]) for row in counts)
    assert "| **all** | 2 | 0.40 | 1.60 | 2 | 0.20 | 1.60 |" in text


def test_check_plans_k4_and_caps_k8_at_the_largest_k_allowed(monkeypatch):
    asked = []

    def fake_plan(model, x, k, num_classes):
        assert num_classes == 10, "the classes the model was created with, which an encoder cannot tell"
        asked.append(k)
        if k > 6:
            raise PlanError(f"{k} blocks: at most 6", max_blocks=6)
        return SimpleNamespace(num_blocks=k, local_peak_bytes=60 // k + 5, e2e_saved_bytes=60)

    monkeypatch.setattr(splitfx.api.planning, "plan", fake_plan)
    outcome = check("test_resnet", ["plan"])
    assert outcome.status == "pass" and list(outcome.stages) == ["create", "trace", "plan"], outcome
    assert asked == [4, 8, 6]
    assert {k: p["k"] for k, p in outcome.plans.items()} == {"4": 4, "8": 6}
    assert outcome.plans["8"]["floor_ratio"] == pytest.approx(15 * 6 / 60)

    def k8_breaks(model, x, k, num_classes):
        if k == 8:
            raise ValueError("bad cut")
        return fake_plan(model, x, k, num_classes)

    monkeypatch.setattr(splitfx.api.planning, "plan", k8_breaks)
    outcome = check("test_resnet", ["convert"])
    assert (outcome.status, outcome.stage, outcome.reason) == ("fail", "plan", "RuntimeError: K=8: ValueError: bad cut")
    assert "convert" not in outcome.stages


def test_real_check_in_a_worker_process(tmp_path):
    results = tmp_path / "r.jsonl"
    [record] = sweep.run(["test_byobnet"], results, ["timm_fx", "plan"], timeout=300)
    assert record["status"] == "pass", record
    assert list(record["stages"]) == ["create", "timm_fx", "trace", "plan"] and record["family"] == "byobnet"
    k4, k8 = record["plans"]["4"], record["plans"]["8"]
    assert k4["k"] == 4 and 4 <= k8["k"] <= 8
    for figures in (k4, k8):
        assert figures["local_over_e2e"] == pytest.approx(figures["local_peak_bytes"] / figures["e2e_saved_bytes"])
        assert figures["floor_ratio"] == pytest.approx(figures["local_over_e2e"] * figures["k"])
    assert list(read_records(results)) == [record]


def test_step_leaves_batchnorm_statistics_those_of_a_batch_of_8_that_starts_with_its_own():
    from splitfx.programs.coverage import RUN, SETTLE_SAMPLES, settling_batch

    c = SimpleNamespace(name="test_efficientnet", blocks=(4,), onnx_dir=None, plans={})
    for stage in ("create", "trace", "plan", "convert", "step"):
        RUN[stage](c)
    norms = {name: m for name, m in c.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    seen = {}

    def record(name, args):
        seen[name] = args[0].transpose(0, 1).flatten(1)  # channel × every other dimension

    probe = copy.deepcopy(c.model).train()
    for name, m in probe.named_modules():
        if name in norms:
            m.register_forward_pre_hook(lambda m, args, name=name: record(name, args))
    batch = settling_batch(c.x)
    assert batch.shape[0] == SETTLE_SAMPLES == 8 and torch.equal(batch[: c.x.shape[0]], c.x)
    with torch.no_grad():
        probe(batch)
    assert len(norms) > 10 and seen.keys() == norms.keys()
    for name, m in norms.items():
        torch.testing.assert_close(m.running_mean, seen[name].mean(1), rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(m.running_var, seen[name].var(1), rtol=1e-5, atol=1e-6, msg=name)


def test_report_merges_each_stage_from_the_latest_line_that_ran_it(tmp_path):
    """A rerun of the stages whose meaning changed replaces those and keeps the rest: lines from before
    ``saves``/``isolation``/``chain`` existed count as partial until a rerun supplies them."""
    here = sweep.versions()
    old = {s: {"status": "pass", "seconds": 1.0} for s in ("create", "timm_fx", "trace", "plan", "convert", "step",
                                                           "parity", "onnx")}
    new = ["create", "trace", "plan", "saves", "convert", "step", "isolation", "chain"]
    ran = {s: {"status": "pass", "seconds": 1.0} for s in new}
    leak = {**ran, "isolation": {"status": "fail", "reason": "AssertionError: loss 1 reached 2 parameter(s)"}}
    lines = [_line(m, here, requested=list(old), stages=old)
             for m in ("resnet18", "vit_tiny_patch16_224", "levit_128s")]
    lines += [_line("resnet18", here, requested=new, stages=ran),
              _line("vit_tiny_patch16_224", here, requested=new, stages=leak, status="fail", stage="isolation",
                    reason=leak["isolation"]["reason"]),
              _line("vit_tiny_patch16_224", here, requested=["create", "trace", "plan", "saves"],
                    stages={s: ran[s] for s in ("create", "trace", "plan", "saves")})]
    # A model that failed at convert, then passed a rerun of chain alone, never ran step, isolation or onnx.
    failed = {**{s: ran[s] for s in ("create", "trace", "plan")}, "convert": {"status": "fail", "reason": "E: x"}}
    lines += [_line("convnext_atto", here, stages=failed, status="fail", stage="convert", reason="E: x"),
              _line("convnext_atto", here, requested=["create", "trace", "plan", "convert", "chain"],
                    stages={s: ran[s] for s in ("create", "trace", "plan", "convert", "chain")})]
    results, out = tmp_path / "r.jsonl", tmp_path / "coverage.md"
    for line in lines:
        append_record(results, line)
    assert main(["coverage", "--report", str(results), "--out", str(out)]) == 0
    first = out.read_text().splitlines()[0]
    assert "1 / " in first and "1 fail" in first and "2 passed only the stages" in first, first
    failures = out.read_text().split("## Failures")[1]
    row = r"^\| vit_tiny_patch16_224 \| \S+ \| isolation \| fail \| AssertionError: loss 1"
    assert re.search(row, failures, re.M), "a later line that did not rerun isolation keeps the failure"


def test_saves_fails_a_plan_that_keeps_most_activations(monkeypatch):
    from splitfx.programs import coverage

    c = SimpleNamespace(blocks=(4,), plan=SimpleNamespace(num_blocks=4, local_peak_bytes=96, e2e_saved_bytes=100))
    with pytest.raises(AssertionError, match=r"keeps 0\.96× of E2E's saved activations \(a pass keeps at most 0\.75×"):
        coverage.RUN["saves"](c)
    monkeypatch.setattr(coverage, "SAVES", 0.97)
    coverage.RUN["saves"](c)
    monkeypatch.setattr(coverage, "SAVES", 0.75)
    c.plan.shared_parameters = ["rope.freqs"]
    with pytest.raises(AssertionError) as caught:
        coverage.RUN["saves"](c)
    assert str(caught.value).endswith("; kept in one block, used by several: rope.freqs")
    assert cause_of("saves", "fail", f"AssertionError: {caught.value}").label == "a parameter every block reads"


def test_chain_and_isolation_stages_fail_on_what_they_observe(monkeypatch):
    """Each check compares something: a chain that differs from the model, or a loss reaching
    parameters its recipe does not say it trains, fails its stage, and the stages it does not
    need still run."""
    import splitfx.runtime.split_module as split_module
    from splitfx.recipes.base import Recipe

    outcome = check("test_resnet", ["chain", "isolation"])
    assert {s: r["status"] for s, r in outcome.stages.items()} == dict.fromkeys(outcome.stages, "pass"), outcome
    assert {"step", "isolation", "chain"} <= set(outcome.stages)

    monkeypatch.setattr(split_module.SplitModule, "chained", lambda self, x: self.traced(x) + 1e-6)
    monkeypatch.setattr(Recipe, "reaches", lambda self, k, num_blocks=None: (0,))
    outcome = check("test_resnet", ["chain", "isolation"])
    assert outcome.stages["chain"]["reason"].startswith("AssertionError: the blocks run one after another differ")
    assert re.match(r"AssertionError: loss 1 reached \d+ parameter\(s\) outside its blocks \['model\.",
                    outcome.stages["isolation"]["reason"]), outcome.stages["isolation"]
    assert outcome.stages["step"]["status"] == "pass"


def test_outputs_compare_leaf_by_leaf_at_the_same_paths():
    from collections import OrderedDict

    from splitfx.base.tensors import equal_outputs

    t = torch.arange(4.0)
    assert equal_outputs({"out": t, "aux": None}, OrderedDict(out=t.clone(), aux=None)), "a traced dict is the model's"
    assert not equal_outputs({"out": t}, {"logits": t}), "another key"
    assert not equal_outputs({"out": t, "aux": t}, {"aux": t, "out": t + 1}), "another order, another value"
    assert not equal_outputs((t, t), (t,)), "a missing leaf"
    assert not equal_outputs(t, t + 1e-7)
