"""A stand-in for ``splitfx.programs.coverage.check`` in tests/test_sweep.py (``--check fake_check:check``).

Standard library only, so a sweep worker running it starts in milliseconds. Every call appends the
model's name to ``$FAKE_CHECK_DIR/checked.txt`` and writes the worker's settings from the sweep (its
``OMP_``, ``MALLOC_`` and ``SPLITFX_`` environment variables) to ``env-NAME.json`` there (on Linux its
``oom_score_adj`` to ``oom-NAME.txt``); files in
that folder pick what happens to a model during its ``trace`` stage or after:

- ``kill-NAME``: SIGKILL the sweep (this worker's parent), once (the file is removed first)
- ``crash-NAME``: the worker exits with status 3
- ``hang-NAME``: the worker blocks until the sweep's time limit kills it
- ``fail-NAME``: the ``plan`` stage fails with the file's text as its reason
"""
import json
import os
import signal
import threading


def check(name, stages, on_stage=None):
    folder = os.environ["FAKE_CHECK_DIR"]
    with open(os.path.join(folder, "checked.txt"), "a") as f:
        f.write(name + "\n")
    with open(os.path.join(folder, f"env-{name}.json"), "w") as f:
        json.dump({k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MALLOC_", "SPLITFX_"))}, f)
    if os.path.exists("/proc/self/oom_score_adj"):
        with open("/proc/self/oom_score_adj") as adj, open(os.path.join(folder, f"oom-{name}.txt"), "w") as f:
            f.write(adj.read().strip())

    def flag(what):
        return os.path.join(folder, f"{what}-{name}")

    outcome = {"model": name, "family": "fake", "status": "pass", "stage": None, "reason": "", "seconds": 0.0,
               "stages": {}, "plans": {}}
    for stage in stages:
        on_stage(stage, None)
        if stage == "trace" and os.path.exists(flag("kill")):
            os.remove(flag("kill"))
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(0)
        if stage == "trace" and os.path.exists(flag("crash")):
            os._exit(3)
        if stage == "trace" and os.path.exists(flag("hang")):
            threading.Event().wait()
        result = {"status": "pass", "seconds": 0.0}
        if stage == "plan" and os.path.exists(flag("fail")):
            with open(flag("fail")) as f:
                result = {"status": "fail", "seconds": 0.0, "reason": f.read().strip()}
            outcome.update(status="fail", stage=stage, reason=result["reason"])
        outcome["stages"][stage] = result
        on_stage(stage, result)
        if result["status"] != "pass":
            break
        if stage == "plan":
            outcome["plans"] = {str(k): {"asked": k, "k": k, "local_peak_bytes": 100, "e2e_saved_bytes": 100 * k,
                                         "local_over_e2e": 1 / k, "floor_ratio": 1.0} for k in (4, 8)}
    return outcome
