"""The process that checks one model for the sweep: ``CHECK_SPEC MODEL STAGE,STAGE,... LIMIT_S``.

Run by file path (``runpy.run_path``), not as ``splitfx.programs...``, so that it imports nothing but
the standard library until it loads the check (``package.module:function``, by default
:func:`splitfx.programs.coverage.check`), which is called as ``check(model, stages, on_stage=hook)``
and returns an ``Outcome`` or a dict with its fields. It prints one ``@@splitfx {json}`` line when each stage starts
and ends and one with the outcome, flushed at once: when the process is killed or crashes, the sweep
still knows which stages finished and which one was in flight. ``SIGALRM`` ends it a minute after the
sweep's own limit, so a worker whose sweep was killed cannot hang on forever.
"""
import dataclasses
import importlib
import json
import math
import os
import resource
import signal
import sys

PREFIX = "@@splitfx "
MEMORY_ENV = "SPLITFX_WORKER_MEMORY"  # bytes of address space a worker may use (0: no limit)


def emit(**event) -> None:
    print(PREFIX + json.dumps(event), flush=True)


def load(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _first_to_go() -> None:
    """Where memory runs out anyway (no limit set), the kernel kills this worker, not the sweep that
    records its crash or anything else on the machine."""
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:  # not Linux, or not allowed: the kernel chooses as it would
        pass


def main(argv: list[str]) -> None:
    spec, model, stages, limit = argv
    if hasattr(signal, "alarm"):
        signal.alarm(math.ceil(float(limit)) + 60)
    memory = int(os.environ.get(MEMORY_ENV, "0"))
    if memory:  # a giant model fails with an allocation error instead of pushing the machine out of memory
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    _first_to_go()
    check = load(spec)
    outcome = check(model, stages.split(","), on_stage=lambda stage, result: emit(stage=stage, result=result))
    emit(outcome=dataclasses.asdict(outcome) if dataclasses.is_dataclass(outcome) else dict(outcome))


if __name__ == "__main__":
    main(sys.argv[1:])
