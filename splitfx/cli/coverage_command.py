"""``splitfx coverage``: the resumable zoo sweep and its report. Imports are lazy: ``--help`` stays fast."""
from __future__ import annotations

import argparse
import math
import os
import sys

from ..base.errors import SplitFXError
from ..base.files import write_text
from .options import UsageError

UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def _count(text: str) -> float:
    """``500M`` → 5e8; empty → nothing (the open end of a range)."""
    text = text.strip().upper()
    if not text:
        return math.nan
    unit = text[-1] if text[-1] in UNITS and not text[-1].isdigit() else ""
    number = float(text[: len(text) - len(unit)])
    if number < 0:
        raise ValueError(text)
    return number * UNITS[unit]


def parameter_range(text: str) -> tuple[float, float]:
    """``LOW:HIGH`` parameters (``:500M``, ``500M:2B``, ``1B:``) → (low, high), ends open where empty."""
    low, colon, high = text.partition(":")
    try:
        if not colon:
            raise ValueError(text)
        lo, hi = _count(low), _count(high)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes LOW:HIGH parameter counts such as :500M, 500M:2B or 1B: (units K, M, B), got {text!r}") from None
    lo, hi = (0.0 if math.isnan(lo) else lo), (math.inf if math.isnan(hi) else hi)
    if lo >= hi:
        raise argparse.ArgumentTypeError(f"takes LOW:HIGH with LOW < HIGH, got {text!r}")
    return lo, hi


def _shown(n: float) -> str:
    for unit in ("B", "M", "K"):
        if n >= UNITS[unit] and n % UNITS[unit] == 0:
            return f"{n / UNITS[unit]:g}{unit}"
    return f"{n:g}"


def _command(args: argparse.Namespace) -> str:
    """The sweep's command line as recorded in each results line (the report names it), after the
    worker settings the environment gave it."""
    import shlex

    from ..programs.coverage import STAGES
    from ..programs.sweep import DEFAULT_CHECK, settings_given

    words = [f"{name}={value}" for name, value in settings_given().items()]
    words += ["splitfx", "coverage", "--results", args.results]
    words += ["--filter", args.filter] if args.filter != "*" else []
    if args.params is not None:
        low, high = args.params
        words += ["--params", f"{_shown(low) if low else ''}:{_shown(high) if math.isfinite(high) else ''}"]
    words += ["--shard", "{}/{}".format(*args.shard)] if args.shard != (0, 1) else []
    words += ["--stages", *args.stages] if set(args.stages) != set(STAGES) else []
    words += ["--check", args.check] if args.check != DEFAULT_CHECK else []
    words += ["--jobs", str(args.jobs), "--timeout", f"{args.timeout:g}"] + (["--resume"] if args.resume else [])
    words += ["--retry-failed"] if args.retry_failed else []
    return shlex.join(words)


def _report(results: str, out: str | None) -> None:
    """The report from ``results`` alone, printed or written to ``out``; it names the command that makes it."""
    import shlex

    from ..programs import coverage_report

    if not os.path.isfile(results):
        raise SplitFXError(f"no results file {results!r}: run `splitfx coverage --results {results}` first")
    command = shlex.join(["splitfx", "coverage", "--report", results, *(["--out", out] if out else [])])
    text = coverage_report.from_file(results, command)
    if out:
        write_text(out, text)
    else:
        print(text, end="")


def _models(args: argparse.Namespace, tqdm) -> list[str]:
    """The sorted timm names of --filter, of --params, of --shard."""
    from ..programs import sweep

    names = sweep.select(args.filter)
    if args.params is not None:
        with tqdm(total=len(names), desc="counting parameters", disable=None) as bar:
            names = sweep.sized(names, *args.params, progress=lambda: bar.update(1), cache=sweep.counts_cache())
    names = sweep.select("*", args.shard, names=names)
    if not names:
        raise SplitFXError(f"--filter {args.filter!r}{' --params' if args.params else ''} matches no timm model")
    return names


def coverage(args: argparse.Namespace) -> int:
    """Run every stage (trace … ONNX parity) over timm models, resumably; or report on a results file.

    Each timm model matching --filter (and --params, of --shard) runs in its own process under
    --timeout: create, timm's own fx trace, splitfx trace, plan at K=4 and K=8 (fewer when the model
    allows fewer), whether K=4 saves at least a quarter of E2E's saved activations, convert, one local
    training step, whether each loss reached exactly its blocks' parameters in that step, eval
    parity of the blocks run one after another with the original, ONNX export parity; --stages
    picks some (with the stages they need), and the report merges each stage's latest result. One
    JSON line per model is appended to --results as it finishes, so a killed sweep loses only the
    models in flight and --resume goes on where it stopped. --report FILE runs nothing and prints
    (or writes to --out) the markdown report from FILE alone: every model of timm.list_models()
    counted, per stage, per family, how evenly each family splits, every failure with its stage and
    reason. A sweep exits with status 1 if any model it ran did not pass.
    A worker has one thread and 14 GiB of address space unless the environment sets OMP_NUM_THREADS
    or SPLITFX_WORKER_MEMORY (bytes, 0 for no limit; giants run alone with 0, since onnxruntime maps
    their weights file into the address space); the recorded command shows what it set.
    """
    from tqdm.auto import tqdm

    from ..programs import sweep

    if args.report:
        _report(args.report, args.out)
        return 0
    if args.retry_failed and not args.resume:
        raise UsageError("coverage: --retry-failed checks again what --resume would skip: give --resume too")
    names = _models(args, tqdm)
    todo = (sweep.remaining(names, args.results, args.stages, args.retry_failed, args.timeout) if args.resume
            else names)
    bar = tqdm(total=len(todo), desc="models", disable=None)
    counts = {"pass": 0, "fail": 0, "timeout": 0, "crash": 0}

    def progress(record):
        counts[record["status"]] += 1
        bar.update(1)
        bar.set_postfix(counts)
        if not sys.stdout.isatty():  # a log file: a line per model, which the bar (on stderr) does not leave
            where = f" at {record['stage']}" if record["stage"] else ""
            why = "" if record["status"] == "pass" else f"{where}: {record['reason']}"
            print(f"[{sum(counts.values())}/{len(todo)}] {record['model']}: {record['status']}{why} "
                  f"({record['seconds']:.0f} s)", flush=True)

    records = sweep.run(todo, args.results, args.stages, jobs=args.jobs, timeout=args.timeout, check=args.check,
                        command=_command(args), progress=progress)
    bar.close()
    print(f"{len(records)} models checked ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
          f"{len(names) - len(todo)} already in {args.results}; results in {args.results}")
    if args.out:
        _report(args.results, args.out)
    return 0 if all(r["status"] == "pass" for r in records) else 1
