"""The ``splitfx`` argument parser: one sub-command per program, options from :mod:`.options`."""
from __future__ import annotations

import argparse
import inspect
import os

from ..base.optimizers import OPTIMIZERS
from ..base.version import __version__
from ..recipes import list_recipes
from ..recipes.registry import recipe_class
from . import commands, coverage_command
from .launch import add_stages
from .options import (
    EPILOG,
    METHODS,
    Parser,
    add_batch,
    add_blocks,
    add_device,
    add_example_input,
    add_max_cut_tensors,
    add_model,
    add_recipe,
    add_replace,
    add_results,
    add_split,
    checkpoint_file,
    count,
    memory_size,
    model_or_checkpoint,
    model_spec,
    output_dir,
    output_file,
    picture_file,
    positive_float,
    positive_int,
)
from .training_options import add_spiking, add_training


def _command(sub, name: str, func, **defaults) -> argparse.ArgumentParser:
    """One sub-command running ``func``: its docstring's first line is the help line, the rest the description."""
    first, _, rest = inspect.getdoc(func).partition("\n\n")
    p = sub.add_parser(name, help=first[0].lower() + first[1:].rstrip("."), description=rest.replace("\n", " "),
                       epilog=EPILOG)
    p.set_defaults(func=func, **defaults)
    return p


def _plan(sub) -> None:
    p = _command(sub, "plan", commands.plan)
    add_model(p)
    add_split(p)
    add_example_input(p, 8, "batch size the memory is predicted for")
    p.add_argument("--budget", type=memory_size, metavar="SIZE",
                   help="memory for one training step, e.g. 4GiB: choose the fewest blocks that fit (or, with "
                        "--max-batch, the largest batch at --blocks)")
    p.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZERS),
                   help="optimizer whose state --budget counts (default %(default)s)")
    p.add_argument("--max-batch", action="store_true", help="with --budget: report the largest batch that fits")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.add_argument("--stages", type=positive_int, metavar="S",
                   help="also group the blocks into S pipeline stages balanced by predicted time (with --budget: "
                        "each stage's memory limit)")
    p.add_argument("--plot", metavar="FILE.png", type=picture_file, help="also draw the plan to this image file")
    add_spiking(p)


def _train(sub) -> None:
    p = _command(sub, "train", commands.train)
    add_model(p, default="resnet18", resumable=True)
    add_blocks(p, None)
    add_recipe(p, "linear", resumable=True)
    add_max_cut_tensors(p, None)
    p.add_argument("--method", choices=METHODS, help="what the planner balances the blocks by: memory (what each "
                   "loss keeps alive), flops, params, or uniform (the same number of ops per block: the control "
                   "for splitfx's balanced cuts); default memory")
    add_replace(p, "RepL fusion: synthesise every N-th interior unit of each run of identical units (N ≥ 2), or the "
                   "units named, from its neighbours' weights instead of training it")
    p.add_argument("--no-detach", dest="detach", action="store_false", default=None,
                   help="control: no detach between blocks (deep supervision): the recipe's heads at the same cuts, "
                        "their losses and the model's summed into one backward, with E2E's memory")
    add_training(p)
    p.add_argument("--out", metavar="DIR", type=output_dir,
                   help="run folder: checkpoint.pt, metrics.jsonl, plan.png, model.onnx (default: "
                        "runs/MODEL-RECIPE-kK, numbered if it exists; with --resume the checkpoint's folder)")
    p.add_argument("--resume", metavar="CKPT", type=checkpoint_file,
                   help="continue from a checkpoint.pt of an earlier run (same model, blocks, recipe, data)")
    p.add_argument("--cuts", type=positive_int, nargs="+", metavar="P",
                   help="end the blocks at these positions of the traced model, as a --stages run placed them "
                        "(it prints them, and its checkpoint keeps them): the same blocks in one process")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out name a folder that holds another run's checkpoint, and replace that run")
    add_stages(p, "train as a pipeline of S ranks")


def _export(sub) -> None:
    p = _command(sub, "export", commands.export)
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT", type=model_or_checkpoint,
                   help="a model name (random weights) or a checkpoint.pt written by splitfx train")
    p.add_argument("--out", "-o", required=True, metavar="FILE.onnx", type=output_file,
                   help="where to write the ONNX file")
    add_example_input(p, 2, "batch size of the example input", "the checkpoint's or the model's own")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension instead of making it dynamic")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")


def _bench(sub) -> None:
    p = _command(sub, "bench", commands.bench)
    add_model(p)
    add_blocks(p, None, "one or more K; with --stages S one K, by default 8S so that each stage can be balanced "
                        "within about one block's time", nargs="+")
    add_recipe(p, "linear", "recipe of the local mode")
    add_example_input(p, 8, "batch size")
    add_device(p)
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps per mode (default %(default)s)")
    p.add_argument("--warmup", type=count, default=2, help="untimed steps first (default %(default)s)")
    add_replace(p, "also run local training with RepL and compare trainable parameters and optimizer state")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for all modes")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for all modes")
    p.add_argument("--floor", action="store_true", help="also time the blocks with no heads, one backward per "
                                                        "block: the least any recipe's step can take")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the results as JSON")
    add_spiking(p)
    add_stages(p, "compare an S-rank pipeline with one process (one thread, and S threads) and with "
                  "torch.distributed.pipelining")


def _bench_convert(sub) -> None:
    p = _command(sub, "bench-convert", commands.bench_convert)
    p.add_argument("--vit-depths", type=positive_int, nargs="*", default=[12, 24, 48],
                   help="ViT-B/16 depths (default %(default)s)")
    p.add_argument("--models", nargs="*", type=model_spec, default=["resnet50", "resnet101", "resnet152"],
                   help="more models (default %(default)s)")
    add_blocks(p, 4, "K")
    add_batch(p, 8, "batch size of the example input")


def _shard(text: str) -> tuple[int, int]:
    """``I/N``: the I-th (0-based) of N shares of the work, for N processes."""
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"takes I/N with 0 ≤ I < N (0/2 and 1/2 for two processes), got {text!r}")
    return int(i), int(n)


def _coverage(sub) -> None:
    from ..programs.coverage import STAGES
    from ..programs.sweep import DEFAULT_CHECK

    p = _command(sub, "coverage", coverage_command.coverage)
    add_results(p, "coverage.jsonl", "each model's result",
                "skip models already in --results for the same timm, torch and splitfx versions and stages")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume, check again the models whose last result there did not pass (one "
                        "that timed out only under a longer --timeout than it ran for)")
    p.add_argument("--filter", default="*", metavar="GLOB",
                   help="fnmatch pattern over timm.list_models() (default all)")
    p.add_argument("--params", type=coverage_command.parameter_range, metavar="LOW:HIGH",
                   help="only models with LOW ≤ parameters < HIGH, counted on the meta device (:500M, 1B:; "
                        "units K, M, B): small models many jobs at a time, giants alone with more memory")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="run only the models at positions ≡ I mod N of the sorted, filtered list (default 0/1)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, metavar="STAGE",
                   help=f"stages to run, the stages they need added ({', '.join(STAGES)}; default all)")
    p.add_argument("--jobs", "-j", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="models in parallel (default %(default)s)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per model (default %(default)s)")
    p.add_argument("--check", default=DEFAULT_CHECK, metavar="MODULE:FUNCTION",
                   help="function that checks one model in its worker process (default %(default)s)")
    p.add_argument("--report", metavar="FILE",
                   help="run nothing: make the report from this results file (with --out, into that file)")
    p.add_argument("--out", metavar="FILE.md", help="write the report to this markdown file (after a sweep: "
                   "the report from --results)")


def _accuracy(sub) -> None:
    p = _command(sub, "accuracy", commands.accuracy, recipe=None)
    add_model(p, default="resnet18", many=True)
    # ffr predicts values; tandem learns from a teacher the table does not have
    classifying = [r for r in list_recipes() if recipe_class(r).traits.predicts and not recipe_class(r).traits.infers]
    p.add_argument("--recipes", nargs="+", default=classifying, choices=list_recipes(), metavar="RECIPE",
                   help="recipes, e2e trained once per model (default: every registered recipe that classifies: "
                        f"{', '.join(classifying)})")
    add_blocks(p, [2, 4, 8], "values of K", nargs="+", dest="blocks_list")
    add_training(p)
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="seeds per cell; seed s gives every cell the same initial weights and data order, so "
                        "differences to E2E are paired (default %(default)s)")
    p.add_argument("--lrs", type=positive_float, nargs="+", default=[1e-3, 2e-3, 4e-3], metavar="LR",
                   help="learning-rate grid searched per recipe and K on the validation split (default "
                        "%(default)s); --validation defaults to "
                        "0.15 here")
    p.add_argument("--widen", type=count, default=2, metavar="N",
                   help="most rates added beyond --lrs, one step past the edge at a time, while the best is at an "
                        "edge (default %(default)s; 0: the grid as given)")
    p.add_argument("--lr-at", type=positive_int, metavar="K",
                   help="search each recipe's rate at this K only (one of --blocks) and train its other K and its "
                        "controls at that rate, as the methods' papers keep one setting across K (default: every "
                        "cell searches its own)")
    p.add_argument("--controls", nargs="*", default=[], metavar="RECIPE",
                   help="recipes of the table that also get, at every K, deep supervision (the same heads, no "
                        "detach) and uniform cuts instead of memory-balanced ones")
    add_replace(p, "RepL fusion for the recipes of --repl-recipes: every N-th interior unit of each run of "
                   "identical units (N ≥ 2), or the units named, as train's --replace", "--repl")
    p.add_argument("--repl-recipes", nargs="+", default=[], metavar="RECIPE",
                   help="recipes of the table (e2e included) that also run with --repl at every K, each against "
                        "its plain cell")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="train only every N-th recipe (per model, E2E first) starting at the I-th (0-based), so N "
                        "processes share a table (default 0/1: all)")
    add_results(p, "accuracy.jsonl", "each run",
                "reuse the runs of --results made with the same protocol (epochs, grid, data, ...)")
    p.add_argument("--report", action="store_true", help="train nothing: make the table from --results alone")
    p.add_argument("--out", type=output_file, help="also write the table to this markdown file")
    p.add_argument("--figures", type=output_dir, metavar="DIR",
                   help="write the pictures (accuracy against memory, validation curves at K=4) into DIR")


def _tasks(sub) -> None:
    from ..programs.tasks import TASKS

    p = _command(sub, "tasks", commands.tasks)
    p.add_argument("names", nargs="*", metavar="TASK",
                   help=f"tasks to run (default: all of {', '.join(TASKS)})")
    p.add_argument("--blocks", "-k", type=positive_int, nargs="+", default=[4], dest="blocks_list", metavar="K",
                   help="values of K (at least 2) of the local runs (default 4); name the tasks before this option")
    p.add_argument("--recipes", nargs="+", default=["linear"], choices=[r for r in list_recipes() if r != "e2e"],
                   metavar="RECIPE", help="recipes of the local runs, each with its default options, every one at "
                   "every K; E2E runs once per seed anyway (default linear)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per method; a seed gives every method "
                   "the same initial weights and batch order (default %(default)s)")
    p.add_argument("--epochs", type=positive_int, help="epochs of every run (default: each task's own)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--results", default="tasks.jsonl", metavar="FILE", type=output_file,
                   help="JSON-lines file each run is appended to as it finishes; runs it already holds (same "
                        "task, K, recipe, seed and epochs) are not run again (default %(default)s)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: the table of the runs --results holds for these tasks")
    p.add_argument("--out", type=output_file, help="also write the table to this markdown file")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="splitfx", epilog=EPILOG,
        description="Split a model into memory-balanced, gradient-isolated blocks for local learning.",
    )
    parser.add_argument("--version", action="version", version=f"splitfx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_plan, _train, _export, _bench, _bench_convert, _coverage, _accuracy, _tasks):
        add(sub)
    return parser
