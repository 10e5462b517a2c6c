"""The coverage sweep: many models, each in its own process, one JSON line per model as it finishes.

A results line holds the model, its family, the timm/torch/splitfx versions, the commit and the
machine (:mod:`~splitfx.base.provenance`), the stages asked for,
the outcome (``pass``, ``fail``, ``timeout`` or ``crash``, the first failing stage and a one-line
reason), wall seconds, each stage's status and seconds, and the plan's memory figures at K=4 and
K=8 (:func:`.coverage.plan_figures`). A line is appended with one ``write`` on an ``O_APPEND``
descriptor and fsynced before the next model is taken, so a killed sweep loses at most the models in
flight, and several sweeps (shards) may share one file. ``--resume`` skips a model whose line has the
same versions and covers the stages asked for.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from ..base.files import write_text
from ..base.jsonl import Record, append_record, read_records
from ..base.provenance import commit, machine
from ..base.version import __version__
from . import coverage, coverage_worker

DEFAULT_CHECK = "splitfx.programs.coverage:check"
WORKER = (sys.executable, "-c",
          f"from runpy import run_path; run_path({coverage_worker.__file__!r}, run_name='__main__')")

def versions() -> dict[str, str]:
    import timm
    import torch

    return {"timm": timm.__version__, "torch": torch.__version__, "splitfx": __version__}


def select(pattern: str = "*", shard: tuple[int, int] = (0, 1), names: Iterable[str] | None = None) -> list[str]:
    """Sorted model names matching ``pattern``; of those, shard ``(i, n)`` keeps the ones at positions ≡ i mod n."""
    if names is None:
        import timm

        names = timm.list_models()
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 ≤ I < N")
    matching = sorted(name for name in set(names) if fnmatch.fnmatchcase(name, pattern))
    return matching[i::n]


def parameter_count(name: str) -> int:
    """Parameters of timm model ``name`` (10 classes, as the check builds it), counted on the meta
    device: nothing is allocated, so a seven-billion-parameter model is counted in a second."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=10)
    return sum(p.numel() for p in model.parameters())


def counts_cache() -> str:
    """Where :func:`sized` keeps parameter counts between sweeps, one file per timm version (a count
    depends only on the model's definition): ``$XDG_CACHE_HOME/splitfx`` or ``~/.cache/splitfx``."""
    import timm

    folder = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(folder, "splitfx", f"parameters-timm-{timm.__version__}.json")


def sized(names: Iterable[str], low: float, high: float, count: Callable[[str], int] | None = None,
          progress: Callable[[], None] | None = None, cache: str | os.PathLike | None = None) -> list[str]:
    """The names whose parameter count ``n`` has ``low ≤ n < high``: one sweep takes the models that
    fit many workers at a time, another the giants with one worker and more memory and time. A model
    that cannot be counted on the meta device is kept where the range starts at 0. Counts are read
    from and added to the JSON file ``cache`` (written whole), so a restarted sweep does not count
    the zoo again; a count that failed is not kept."""
    known = _read_counts(cache) if cache is not None else {}
    kept, count, added = [], count or parameter_count, False
    for name in names:
        if name not in known:
            with contextlib.suppress(Exception):  # uncountable: range start 0, recounted next time
                known[name], added = count(name), True
        if low <= known.get(name, 0) < high:
            kept.append(name)
        if progress:
            progress()
    if cache is not None and added:
        with contextlib.suppress(OSError):  # a cache that cannot be written costs a recount, nothing more
            write_text(cache, json.dumps(known, sort_keys=True, indent=0) + "\n")
    return kept


def _read_counts(path: str | os.PathLike) -> dict[str, int]:
    """The counts in cache file ``path``; none where it is missing or unreadable (it is only a cache)."""
    try:
        with open(path) as f:
            counts = json.load(f)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in counts.items() if isinstance(v, int)} if isinstance(counts, dict) else {}


def remaining(names: Iterable[str], path: str | os.PathLike, stages: Iterable[str],
              retry_failed: bool = False, timeout: float | None = None) -> list[str]:
    """``names`` minus those already recorded in ``path`` for these versions and (at least) these
    stages; with ``retry_failed`` also minus only those whose last such record passed (a fix for
    what failed needs no new version to be measured), except a timeout, which is checked again
    only under a longer ``timeout`` than it ran for (under the same one it would time out again)."""
    here, wanted = versions(), set(coverage.with_prerequisites(stages))
    last = {r["model"]: r for r in read_records(path)
            if r.get("versions") == here and wanted <= set(r.get("requested", ()))}

    def settled(record: dict) -> bool:
        if record.get("status") == "timeout":
            return timeout is not None and timeout <= record.get("seconds", 0)
        return record.get("status") == "pass"

    done = {m for m, r in last.items() if not retry_failed or settled(r)}
    return [n for n in names if n not in done]


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it started
    except (AttributeError, ProcessLookupError, PermissionError):
        proc.kill()


def _crash_reason(returncode: int, stderr: str) -> str:
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit {returncode}"
    tail = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f"{how}: {tail[-1][:300]}" if tail else f"{how} without an outcome"


def _from_events(name: str, stdout: str, stderr: str, returncode: int, timeout: float | None,
                 seconds: float) -> Record:
    """The worker's outcome line, or, when it timed out or crashed, what its stage lines tell."""
    events = [json.loads(line[len(coverage_worker.PREFIX):]) for line in stdout.splitlines()
              if line.startswith(coverage_worker.PREFIX)]
    for event in reversed(events):
        if "outcome" in event:
            return event["outcome"]
    stages, in_flight = {}, None
    for event in events:
        if event.get("result") is None:
            in_flight = event.get("stage")
        else:
            stages[event["stage"]], in_flight = event["result"], None
    status = "timeout" if timeout is not None else "crash"
    reason = f"over the {timeout:g} s limit" if timeout is not None else _crash_reason(returncode, stderr)
    if in_flight:
        spent = seconds - sum(s.get("seconds", 0.0) for s in stages.values())
        stages[in_flight] = {"status": status, "reason": reason, "seconds": round(max(spent, 0.0), 3)}
    return {"model": name, "status": status, "stage": in_flight, "reason": reason, "stages": stages, "plans": {}}


# Address space per worker: torch's libraries map ~5 GiB; the rest is the model, its fakes and one step.
# Models that need more (billion-parameter ViTs) fail with an allocation error instead of taking the
# machine down; set SPLITFX_WORKER_MEMORY (bytes, 0 for none) on a bigger machine.
WORKER_MEMORY = 14 * 2**30
# glibc malloc: blocks of 128 KiB and more are mmapped and so go back to the OS when freed, and one
# arena serves every thread: the address space a worker holds is what it uses, not its past peak
# fragmented over per-thread arenas (each reserves 64 MiB of the limit above).
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "1"}
# What a worker gets where the sweep's environment sets nothing else.
WORKER_DEFAULTS = {"OMP_NUM_THREADS": "1", coverage_worker.MEMORY_ENV: str(WORKER_MEMORY), **MALLOC}


def settings_given(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The worker settings (:data:`WORKER_DEFAULTS`) that ``environ`` sets itself: part of how a sweep
    was run (the giants' run needs ``SPLITFX_WORKER_MEMORY=0``), so its recorded command shows them."""
    return {name: environ[name] for name in WORKER_DEFAULTS if name in environ}


def worker_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``environ`` with :data:`WORKER_DEFAULTS` where it sets none: ``OMP_NUM_THREADS=1``,
    :data:`WORKER_MEMORY` bytes of address space, the :data:`MALLOC` settings."""
    return {**WORKER_DEFAULTS, **environ}


def run_one(name: str, stages: Iterable[str], timeout: float, check: str = DEFAULT_CHECK,
            live: set | None = None) -> Record:
    """Check ``name`` in a fresh process (environment: :func:`worker_env`) under ``timeout`` seconds."""
    env = worker_env()
    began = time.perf_counter()
    proc = subprocess.Popen([*WORKER, check, name, ",".join(stages), str(timeout)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    live = set() if live is None else live
    live.add(proc)
    limit = None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        limit = timeout
    finally:
        live.discard(proc)
    seconds = time.perf_counter() - began
    record = _from_events(name, out, err, proc.returncode, limit, seconds)
    record.update(model=name, family=coverage.family(name), seconds=round(seconds, 3))
    return record


def run(names: Iterable[str], results: str | os.PathLike, stages: Iterable[str] = coverage.STAGES, *,
        jobs: int = 1, timeout: float = 600.0, check: str = DEFAULT_CHECK, command: str = "",
        progress: Callable[[Record], None] | None = None) -> list[Record]:
    """Check every model of ``names``, ``jobs`` at a time, appending each line to ``results`` as it ends.

    On Ctrl-C or SIGTERM the workers in flight are killed and nothing is written for them."""
    stages = coverage.with_prerequisites(stages)
    meta = {"versions": versions(), "requested": list(stages), "command": command, "commit": commit(),
            "machine": machine()}
    lock, live, stopping = threading.Lock(), set(), threading.Event()

    def one(name: str) -> Record | None:
        record = run_one(name, stages, timeout, check, live)
        with lock:
            if stopping.is_set():
                return None
            record = {key: record.get(key) for key in ("model", "family", "status", "stage", "reason", "seconds")
                      } | meta | {"stages": record.get("stages", {}), "plans": record.get("plans", {})}
            append_record(results, record)
            if progress:
                progress(record)
        return record

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = [pool.submit(one, name) for name in names]
        done = [f.result() for f in futures]
    except BaseException:
        with lock:
            stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(live):
            _kill(proc)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    pool.shutdown()
    return [r for r in done if r is not None]


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # ``kill PID`` ends the sweep as Ctrl-C does: workers killed, nothing half-written
