"""docs/accuracy_tables.py's work queue: every job of its QUEUE runs once, in order, two at a time, never
two on one recipe of a table; each job is its table's protocol narrowed to one recipe; a failed job
does not stop the others, an interrupted one stops the queue starting more."""
import importlib.util
import json
import threading
from pathlib import Path

import pytest

from splitfx.cli.parser import build_parser
from splitfx.cli.preflight import train_config
from splitfx.programs.accuracy import protocol

DOCS = Path(__file__).resolve().parents[1] / "docs"
WAIT = 30  # seconds any event may take before the test fails instead of hanging


@pytest.fixture
def tables():
    spec = importlib.util.spec_from_file_location("accuracy_tables", DOCS / "accuracy_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _job(argv: list[str]) -> tuple[str, str]:
    """(model, recipe) of a job's command line: its last --recipes."""
    return argv[argv.index("accuracy") + 1], argv[len(argv) - argv[::-1].index("--recipes")]


def test_every_job_runs_once_in_order_two_at_a_time_never_two_on_one_recipe(tables, monkeypatch):
    jobs = [tables.Job(t, r, k, n) for t, recipes, k, n in tables.QUEUE for r in recipes]
    started, live, overlapped = [], set(), threading.Event()
    lock = threading.Lock()

    def call(argv, cwd):
        job = _job(argv)
        with lock:
            assert job not in live, f"{job} runs twice at once"
            live.add(job)
            started.append(argv)
            if len(live) == 2:
                overlapped.set()
        if len(started) == 1:  # the first job holds until a second one runs beside it
            assert overlapped.wait(WAIT), "no second job started beside the first"
        with lock:
            live.discard(job)
        return 0

    monkeypatch.setattr(tables.subprocess, "call", call)
    assert tables.run_queue(slots=2) == 0
    assert sorted(map(tuple, started)) == sorted(tuple(j.argv()) for j in jobs)
    for group in {_job(a) for a in started}:  # a recipe's later stage never starts before its earlier one
        assert [a for a in started if _job(a) == group] == [j.argv() for j in jobs if _job(j.argv()) == group]


def test_a_failed_job_leaves_the_others_and_an_interrupted_one_stops_the_queue(tables, monkeypatch, capsys):
    jobs = [tables.Job(t, r, k, n) for t, recipes, k, n in tables.QUEUE for r in recipes]
    started = []
    monkeypatch.setattr(tables.subprocess, "call", lambda argv, cwd: started.append(argv) or (_job(argv)[1] == "dgl"))
    assert tables.run_queue(slots=2) == 1
    assert len(started) == len(jobs)
    assert capsys.readouterr().err.count("failed: ") == sum(j.recipe == "dgl" for j in jobs)

    started.clear()
    monkeypatch.setattr(tables.subprocess, "call", lambda argv, cwd: started.append(argv) or 130)
    assert tables.run_queue(slots=2) == 1
    assert 1 <= len(started) <= 2  # the interrupted job, and at most the one started beside it


def test_a_job_is_its_tables_protocol_narrowed_to_one_recipe(tables):
    parser = build_parser()
    for table, recipes, blocks, repl in tables.QUEUE:
        seen = set()
        for recipe in recipes:
            args = parser.parse_args(tables.Job(table, recipe, blocks, repl).argv()[3:])
            assert args.recipes == [recipe]
            assert args.controls == [r for r in tables.CONTROLS if r == recipe]  # the CLI refuses others
            assert args.repl_recipes == ([recipe] if args.repl is not None else [])
            assert args.results == str(DOCS / f"accuracy-cluttered-{table}.jsonl")
            seen.add(json.dumps(protocol(train_config(args), args.lrs, args.seeds, args.widen, args.lr_at),
                                sort_keys=True))
        assert len(seen) == 1, f"{table}'s jobs would write lines of {len(seen)} protocols"
