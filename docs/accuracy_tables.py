"""The accuracy evidence of #38: its sweeps, and its tables and pictures in docs/benchmarks.md.

One table per model, each from its own results file made by one pinned commit (the report refuses
lines of another code digest): ResNet-32 (5 epochs) and the hybrid ViT (6: it learns slower), every
classifying recipe at K = 2, 4, 8, 16, E2E, and the controls of ``linear`` (deep supervision, uniform
cuts), 5 paired seeds, the rate searched per recipe at K=4 on a validation split and widened past an
edge. The rate halves after every epoch: with ×0.8 the last epoch still ran at 0.4× the rate and one
E2E seed fell from 86 % to 77 % validation accuracy in it. The options below are the tables' protocol:
``--report`` must repeat them, so they live here once.

    python docs/accuracy_tables.py                  # tables into benchmarks.md, pictures into docs/accuracy/
                                                    # (and WRITTEN's: ffr.md, tasks.md, memory-tables.md, seed-plans.md,
                                                    # pipeline-bench.md)
    python docs/accuracy_tables.py --run NAME I/N   # train shard I of N of table NAME (resumes; hours)
    python docs/accuracy_tables.py --run NAME I/N --recipes e2e dgl --blocks 4 8   # a slice of it first
    python docs/accuracy_tables.py --queue          # every table in QUEUE's order, two processes at a time
    python docs/accuracy_tables.py --queue --slots 1   # one at a time (beside another long job)

A slice is the same table (the same protocol, the same results file): the full run later skips its cells.

The non-image benchmark is the character model of ``splitfx tasks`` (perplexity on Python's own help
text): every recipe that trains tokens at K = 4 and 8, E2E, 5 paired seeds at the task's own AdamW
rate (``python docs/accuracy_tables.py --run chars``; its table between the ``tasks-chars`` markers).

Run the sweeps with the package of the commit that made the table's first lines on the path (``git
worktree add --detach /tmp/wt COMMIT``, ``PYTHONPATH=/tmp/wt``, ``OMP_NUM_THREADS=1``): this script
and the results files are the ones here, and each line records the package's commit and digest.
"""
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).parent
RECIPES = ["e2e", "linear", "dgl", "infopro", "auglocal", "man", "hpff", "mlaan", "glcan", "infopro_supcon"]
CONTROLS = ["linear"]  # the recipes run with their controls too
PROTOCOL = ["--recipes", *RECIPES, "--blocks", "2", "4", "8", "16", "--data", "cluttered", "--seeds", "5",
            "--lr-at", "4", "--lr-decay", "0.5", "--controls", *CONTROLS, "--validation", "0.1",
            "--channels-last"]
# On token outputs DGL and InfoPro build linear's head (LayerNorm → Linear per token; InfoPro's decoder
# reconstructs images only), so their runs repeat linear's; SupCon contrasts classes and refuses tokens.
CHARS = ["chars", "--recipes", *(r for r in RECIPES if r not in ("e2e", "dgl", "infopro", "infopro_supcon")),
         "--blocks", "4", "8", "--seeds", "5", "--results", str(HERE / "tasks-chars.jsonl")]
# Tables other programs write beside benchmarks.md, spliced into it between their markers (benchmarks.md
# names the command that writes each): ffr.md by ``python -m splitfx.programs.ffr_results``, tasks.md by
# ``splitfx tasks``, memory-tables.md by ``python docs/memory_tables.py``.
WRITTEN = {"ffr": "ffr.md", "tasks": "tasks.md", "memory-tables": "memory-tables.md", "seed-plans": "seed-plans.md",
           "pipeline-bench": "pipeline-bench.md"}
TABLES = {
    "resnet32": ["splitfx.models:resnet32", *PROTOCOL, "--epochs", "5", "--lrs", "1e-3", "2e-3", "4e-3"],
    "hybrid_vit8": ["splitfx.models:hybrid_vit8", *PROTOCOL, "--epochs", "6", "--lrs", "5e-4", "1e-3", "2e-3"],
}


# The order the tables are trained in: first the slice that answers the seeds' claims (does MAN, HPFF
# or MLAAN close the gap DGL and InfoPro leave at K >= 4), on both models; then RepL on ResNet-32 (every
# 2nd unit of each stage fused, E2E and DGL each against its plain cell); then the rest. Each stage is
# (table, its recipes, the K it narrows to (None: all), and RepL's N for a twin of each recipe).
SLICE = ["e2e", "linear", "dgl", "infopro", "man", "hpff", "mlaan"]
QUEUE = [("resnet32", SLICE, ["4", "8"], None), ("hybrid_vit8", SLICE, ["4", "8"], None),
         ("resnet32", ["e2e", "dgl"], ["4", "8"], 2), ("resnet32", RECIPES, None, None),
         ("hybrid_vit8", RECIPES, None, None)]


class Job(NamedTuple):
    """One recipe of one stage: ``splitfx accuracy``'s cells of one (model, recipe), its own process."""
    table: str
    recipe: str
    blocks: list[str] | None
    repl: int | None

    def argv(self) -> list[str]:
        """The table's command narrowed to this recipe (the last --recipes and --controls given count)."""
        controls = ["--controls", *(r for r in CONTROLS if r == self.recipe)]
        blocks = ["--blocks", *self.blocks] if self.blocks else []
        repl = ["--repl", str(self.repl), "--repl-recipes", self.recipe] if self.repl else []
        return command(self.table, "--resume", "--recipes", self.recipe, *controls, *blocks, *repl)


def run_queue(slots: int = 2) -> int:
    """Every job of QUEUE, in its order, ``slots`` processes at a time: when one ends the next starts, so no
    core waits for a stage's slowest recipe. A recipe of a table never trains in two processes at once (a
    later stage repeats it with more K); the run goes on past a failed job and says which failed, and
    stops starting jobs once one is interrupted."""
    pending = [Job(table, recipe, blocks, repl) for table, recipes, blocks, repl in QUEUE for recipe in recipes]
    running: set[tuple[str, str]] = set()
    failed: list[Job] = []
    turn = threading.Condition()

    def take() -> Job | None:
        with turn:
            while pending:
                job = next((j for j in pending if (j.table, j.recipe) not in running), None)
                if job is not None:
                    pending.remove(job)
                    running.add((job.table, job.recipe))
                    return job
                turn.wait()
            return None

    def work() -> None:
        while (job := take()) is not None:
            code = -1  # a call that raised counts as failed
            try:
                code = subprocess.call(job.argv(), cwd=HERE)
            finally:
                with turn:
                    running.discard((job.table, job.recipe))
                    if code:
                        failed.append(job)
                    if code < 0 or code == 130:  # interrupted (Ctrl-C reaches the children too): start no more
                        pending.clear()
                    turn.notify_all()

    workers = [threading.Thread(target=work) for _ in range(slots)]
    for worker in workers:
        worker.start()
    for worker in workers:
        while worker.is_alive():  # joined in steps, so Ctrl-C reaches this thread too
            worker.join(1)
    for job in failed:
        print(f"failed: {' '.join(job.argv())}", file=sys.stderr)
    return 1 if failed else 0


def command(name: str, *extra: str) -> list[str]:
    """``splitfx accuracy`` for table ``name``. Every command runs in docs/ (``cwd=HERE``): ``python -m``
    puts its working directory first on the path, and a repository root there would shadow the
    pinned package on ``PYTHONPATH``."""
    return [sys.executable, "-m", "splitfx", "accuracy", *TABLES[name], "--results",
            str(HERE / f"accuracy-cluttered-{name}.jsonl"), *extra]


def splice(text: str, marker: str) -> None:
    """Put ``text`` between the ``<!-- MARKER -->`` and ``<!-- /MARKER -->`` lines of benchmarks.md."""
    path = HERE / "benchmarks.md"
    page = path.read_text()
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if begin not in page or end not in page:
        raise SystemExit(f"{path}: no {begin} … {end} markers to put the table between")
    head, rest = page.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--queue"]:
        if argv[1:] and (argv[1] != "--slots" or len(argv) != 3 or not argv[2].isdigit() or int(argv[2]) < 1):
            raise SystemExit("usage: python docs/accuracy_tables.py --queue [--slots N] (N processes at a time, "
                             "default 2)")
        return run_queue(int(argv[2]) if argv[1:] else 2)
    if argv[:2] == ["--run", "chars"]:
        return subprocess.call([sys.executable, "-m", "splitfx", "tasks", *CHARS], cwd=HERE)
    if argv[:1] == ["--run"]:
        if len(argv) < 3 or argv[1] not in TABLES:
            raise SystemExit(f"usage: python docs/accuracy_tables.py --run {{{','.join([*TABLES, 'chars'])}}} I/N "
                             "[more splitfx accuracy options, such as --recipes R ... --blocks K ...] (chars: no I/N)")
        name, shard, *narrower = argv[1:]
        return subprocess.call(command(name, "--resume", "--shard", shard, *narrower), cwd=HERE)
    for name in TABLES:
        if not (HERE / f"accuracy-cluttered-{name}.jsonl").exists():
            continue
        made = subprocess.run(command(name, "--report", "--figures", str(HERE / "accuracy")), capture_output=True,
                              text=True, cwd=HERE)
        if made.returncode and "has no reported run" in made.stderr:  # only searches so far
            splice("No reported runs yet.", f"accuracy-cluttered:{name}")
        elif made.returncode:
            raise SystemExit(f"{name}: {made.stderr.strip()}")
        else:
            table, *wrote = made.stdout.split("\nwrote ")
            pictures = [Path(line.strip()).relative_to(HERE) for line in wrote]
            splice("\n".join([table, "", *(f"![{p.stem}]({p.as_posix()})" for p in pictures)]),
                   f"accuracy-cluttered:{name}")
    if (HERE / "tasks-chars.jsonl").exists():
        made = subprocess.run([sys.executable, "-m", "splitfx", "tasks", *CHARS, "--report"], capture_output=True,
                              text=True, check=True, cwd=HERE)
        splice(made.stdout, "tasks-chars")
    for marker, table in WRITTEN.items():  # their sections sit one heading level below benchmarks.md's
        splice(re.sub(r"^(#{2,}) ", r"#\1 ", (HERE / table).read_text(), flags=re.MULTILINE), marker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
