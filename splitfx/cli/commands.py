"""What each command does, over the API and the programs. Imports are lazy: ``--help`` stays fast."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from ..base.errors import SplitFXError
from ..base.files import write_text
from .options import UsageError


def _recipe(args: argparse.Namespace):
    from .preflight import recipe_from

    return recipe_from(args)


def plan(args: argparse.Namespace) -> int:
    """Show how a model would be split and what each block costs.

    Trace MODEL, predict per-node saved activations and FLOPs under FakeTensorMode (no real
    compute), and print the memory-balanced split: per block the module span, parameters,
    predicted saved activation bytes (aux head included), FLOPs, the tensors it hands over, and the
    predicted peak of E2E vs local training. With --budget, K is the fewest blocks whose training
    step (activations, parameters, gradients, optimizer state) fits; with --max-batch too, the
    largest batch that fits at --blocks.
    """
    import torch

    from ..api.planning import max_batch
    from ..api.planning import plan as make_plan
    from ..base.sizes import nbytes
    from .preflight import model_and_size

    model, size = model_and_size(args)
    options = dict(method=args.method, recipe=_recipe(args), leaf_modules=args.leaf,
                   replace=args.replace, replace_mode=args.replace_mode,
                   max_cut_tensors=args.max_cut_tensors, tolerance=args.tolerance, auto_leaf=args.auto_leaf,
                   tied=args.tied)
    x = torch.randn(args.batch, *size)
    if args.max_batch and args.budget is None:
        raise SplitFXError("--max-batch needs --budget SIZE: the memory the batch must fit in")
    if args.max_batch:
        p = max_batch(model, x, args.blocks, memory_budget=args.budget, optimizer=args.optimizer,
                      split_points=args.split_points, **options)
    else:
        p = make_plan(model, x, args.blocks, split_points=args.split_points, memory_budget=args.budget,
                      optimizer=args.optimizer, stages=args.stages, **options)
    print(p.to_json() if args.json else p.table())
    if args.budget is not None and not args.json and args.stages is None:  # with --stages: per stage, above
        what = f"batch {p.input_shapes[0][0]} is the largest that fits" if args.max_batch else f"K={p.num_blocks} fits"
        print(f"{what}: predicted training peak {nbytes(p.training_peak_bytes(args.optimizer))} with "
              f"{args.optimizer} (budget {args.budget})")
    if args.plot:
        p.plot(args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def export(args: argparse.Namespace) -> int:
    """Export a model or a splitfx train checkpoint to ONNX, verified with onnxruntime.

    Export the eval-mode model (no aux heads, no detach nodes, RepL folded) with the dynamo
    exporter and a dynamic batch dimension, then run it in onnxruntime at two batch sizes and
    compare with PyTorch (max abs diff ≤ 1e-4 × max(1, max |output|) and identical top-1). The
    file (with its weights in FILE.onnx.data beside it when they are over 1 GiB) is written only if
    it passes.
    """
    import torch

    from ..api.onnx_export import export_onnx
    from ..programs.train import load_checkpoint_model

    if os.path.isfile(args.model):
        for written in (args.out, f"{args.out}.data"):  # the ONNX file, and its weights when they go beside it
            if os.path.exists(written) and os.path.samefile(written, args.model):
                raise SplitFXError(f"--out {args.out} would write over the checkpoint being exported "
                                   f"({args.model}); give another file, such as {os.path.splitext(args.model)[0]}.onnx")
        model, config = load_checkpoint_model(args.model)
        size = args.input_size or (3, config.input_size, config.input_size)
    else:
        from .preflight import model_and_size

        model, size = model_and_size(args)
    report = export_onnx(model, args.out, torch.randn(args.batch, *size), dynamic_batch=not args.static_batch,
                         verify=not args.no_verify)
    print(report)
    return 0


def bench(args: argparse.Namespace) -> int:
    """Memory and step time: E2E vs activation checkpointing vs local training.

    In one process, train MODEL for --steps timed steps (after --warmup) end to end, with
    activation checkpointing over the same K segments (use_reentrant=False), and with local
    losses, all with SGD momentum; print median step time, peak saved activations and the whole
    training step's peak as the allocator sees it (weights, gradients, optimizer state, batch,
    activations, transients: the profiler's memory timeline on CPU, max_memory_allocated on CUDA),
    each with the plan's prediction beside it, and peak RSS growth (CPU), each as a ratio to E2E.
    With --stages S, under
    torchrun --nproc-per-node S: samples/s and per-rank memory of the S-rank pipeline vs one process
    (with one thread, and with S threads: the same cores) vs torch.distributed.pipelining (GPipe,
    1F1B), on CPU with one thread per rank.
    """
    if args.stages is not None:
        from .launch import bench as bench_stages
        return bench_stages(args)
    from ..programs import bench as programs_bench
    from ..programs.models import create_model
    from .preflight import model_and_size

    _, size = model_and_size(args)
    results = []
    for k in args.blocks or [4]:
        result = programs_bench.run(
            lambda: create_model(args.model), args.model, k, recipe=_recipe(args), batch=args.batch, input_size=size,
            device=args.device, steps=args.steps, warmup=args.warmup, replace=args.replace,
            channels_last=args.channels_last, amp=args.amp, floor=args.floor,
        )
        print(result.table(), end="\n\n", flush=True)
        results.append(result.to_dict())
    if args.json:
        from ..base.provenance import provenance

        write_text(args.json, json.dumps({**provenance(), "results": results}, indent=2))
    return 0


def bench_convert(args: argparse.Namespace) -> int:
    """Time trace, plan and convert as the graph grows.

    Wall time of trace, plan (trace + fake-tensor cost probe + cuts + partition) and convert for
    ViT-B/16 at several depths and for the models given.
    """
    import torch

    from ..programs.bench import conversion_time
    from ..programs.models import create_model

    specs = [(f"vit_base_patch16_224 depth={d}", lambda d=d: create_model("vit_base_patch16_224", depth=d))
             for d in args.vit_depths]
    specs += [(name, lambda name=name: create_model(name)) for name in args.models]
    print(f"{'model':<30} {'nodes':>6} {'params':>8} {'trace s':>8} {'plan s':>7} {'convert s':>9}")
    for name, factory in specs:
        t = conversion_time(factory(), name, torch.randn(args.batch, 3, 224, 224), args.blocks)
        print(f"{t.model:<30} {t.nodes:>6} {t.params / 1e6:>7.1f}M {t.trace_s:>8.2f} {t.plan_s:>7.2f} "
              f"{t.convert_s:>9.2f}", flush=True)
    return 0


def train(args: argparse.Namespace) -> int:
    """Train a model block by block on the embedded digits (or your data), and show the memory it saves.

    Convert MODEL and train it with local losses, one gradient-isolated block at a time. Prints
    per-epoch train loss and test accuracy (validation accuracy with --validation, and test accuracy
    once at the end), then the peak of saved activations of local training
    next to that of one E2E step of the unsplit model, both measured with the same meter on the same
    batch. Leaves a run folder (default runs/MODEL-RECIPE-kK): checkpoint.pt after every epoch
    (atomically), metrics.jsonl (one line per epoch), plan.png and model.onnx (the trained model,
    verified with onnxruntime). --resume continues a checkpoint bit-exactly on CPU; options not given
    come from it, options given must match it, and --epochs is the total. With --stages S, under
    torchrun --nproc-per-node N: S pipeline stages × N/S data-parallel replicas, the same checkpoint
    (it resumes on any number of ranks); see docs/distributed.md.
    """
    if args.stages is not None:
        if args.detach is False:
            raise UsageError("--no-detach runs one backward through every block, so there are no blocks to place "
                             "on pipeline ranks; drop --stages")
        from .launch import train as train_stages
        return train_stages(args)
    from ..programs.run_folder import finish, reserved
    from ..programs.train import test_accuracy
    from ..programs.train import train as run_training
    from .preflight import train_run

    config, state, out = train_run(args)
    with reserved(out, config, resume=args.resume, overwrite=args.overwrite) as out:
        print(f"run folder: {out}{os.sep}", flush=True)
        result = run_training(config, out=out, resume=state)
        if config.validation and config.task == "regression":
            from ..programs.regression import test_errors

            print(f"test errors of the final model (test set read once, now): {test_errors(result)}")
        elif config.validation:
            print(f"test accuracy of the final model (test images read once, now): "
                  f"{100 * test_accuracy(result):.2f} %")
        finish(result.module, result.example, out)
    return 0


def accuracy(args: argparse.Namespace) -> int:
    """Table of test accuracy: E2E vs recipes at several K, over paired seeds, rates picked on validation.

    Every (MODEL, recipe, K) cell, and E2E once per model, gets the same budget: one run per
    learning rate of --lrs (seed 0) evaluated on a validation split carved from the training images,
    the grid widened while the best rate is at its edge; the rate with the best final validation
    accuracy is kept, and its runs for --seeds seeds are evaluated once on the test images. Seed s
    gives every cell the same initial weights and data order, so the table gives each cell's 95 %
    interval and its paired difference to E2E with a 95 % interval; --controls adds deep supervision
    and uniform cuts for the recipes named. Each run is appended to --results as it finishes, with
    its commit, command, machine and code digest: --resume continues a killed table, --shard I/N
    splits it between processes, --report remakes the table (and --figures the pictures) from the
    file alone, refusing lines made by different code. Every model, recipe and K is checked before
    the first run trains.
    """
    from ..base.jsonl import read_records
    from ..programs import accuracy as programs_accuracy
    from ..programs import accuracy_report
    from . import preflight

    config = preflight.train_config(args)
    config = replace(config, validation=0.15) if args.validation is None else config
    if not config.validation:
        raise UsageError("accuracy: --validation 0 leaves nothing to choose the learning rate on; give a "
                         "fraction such as 0.15")
    table = programs_accuracy.protocol(config, args.lrs, args.seeds, args.widen, args.lr_at)
    mine = [r for r in read_records(args.results) if r.get("protocol") == table]
    if args.report:
        reported = [r for r in mine if r["phase"] == "test"]
        if not reported:
            others = {json.dumps({k: r.get("protocol", {}).get(k) for k in {*table, *r.get("protocol", {})}
                                  if table.get(k) != r.get("protocol", {}).get(k)}, sort_keys=True)
                      for r in read_records(args.results)}
            raise UsageError(f"--report: {args.results} has no reported run made with these options"
                             + (f"; its runs differ in {'; '.join(sorted(others))}" if others else ""))
    else:
        if mine and not args.resume:
            raise UsageError(f"--results {args.results} already has {len(mine)} run(s) of this protocol: give "
                             "--resume to continue that table, or another --results file")
        preflight.accuracy(args.models, args.recipes, args.blocks_list, config, args.controls, args.lr_at, args.repl,
                           args.repl_recipes)
        reported = programs_accuracy.run(args.models, args.recipes, args.blocks_list, config, lrs=args.lrs,
                                         seeds=args.seeds, results=args.results, controls=args.controls,
                                         repl=args.repl, repl_recipes=args.repl_recipes, widen=args.widen,
                                         lr_at=args.lr_at, shard=args.shard)
        mine = [r for r in read_records(args.results) if r.get("protocol") == table]
    text = accuracy_report.markdown(reported, args.blocks_list, mine)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    if args.figures:
        for path in accuracy_report.figures(reported, args.figures, mine):
            print(f"wrote {path}")
    return 0


def tasks(args: argparse.Namespace) -> int:
    """Local learning beyond classification: E2E vs K blocks on the embedded tasks, over seeds.

    Trains a segmentation net on generated shapes (mIoU), an EDSR-style net on 2× super-resolution
    of scikit-learn's digits (PSNR), an MLP on Friedman #1 regression (RMSE) and a character-level
    causal transformer on Python's own help text (perplexity), each end to end and at every --blocks
    K with every --recipes recipe, for --seeds seeds; the aux heads are those each task's output calls
    for. Prints, per task, recipe and K, the metric's mean with its 95 % t-interval, the ratio to E2E
    paired by seed with its interval, and the predicted peak saved activations as a fraction of E2E's.
    Every run is appended to --results as it finishes (with commit, command and machine) and skipped
    when it is already there, so a stopped sweep resumes; --report trains nothing and tabulates the
    runs the file holds. Nothing is downloaded.
    """
    import torch

    from ..programs import tasks as programs_tasks

    torch.set_num_threads(args.threads)
    names = args.names or list(programs_tasks.TASKS)
    unknown = [n for n in names if n not in programs_tasks.TASKS]
    if unknown:
        raise UsageError(f"tasks: unknown task {unknown[0]!r}; choose from {', '.join(programs_tasks.TASKS)}")
    if min(args.blocks_list) < 2:
        raise UsageError(f"tasks: --blocks {min(args.blocks_list)}: give K of 2 or more (E2E, K=1, runs anyway)")
    if args.report:
        results = [r for r in programs_tasks.done(args.results).values() if r["task"] in names]
        if not results:
            raise UsageError(f"tasks --report: {args.results} holds no run of {', '.join(names)}")
    else:
        results = programs_tasks.sweep(names, args.blocks_list, args.recipes, args.seeds, args.epochs, args.results,
                                       progress=lambda line: print(line, flush=True))
    table = programs_tasks.table(results)
    print(table, end="")
    if args.out:
        write_text(args.out, table)
    return 0
