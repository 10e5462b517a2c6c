"""What each command does, over the API and the programs. Imports are lazy: ``--help`` stays fast."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..base.errors import SplitFXError
from ..base.files import write_text
from .options import replace_arg


def _model_and_size(args: argparse.Namespace):
    from ..programs.models import create_model, default_input_size

    model = create_model(args.model)
    return model, args.input_size or default_input_size(model)


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
    from ..base.report import nbytes

    model, size = _model_and_size(args)
    options = dict(method=args.method, recipe=args.recipe, leaf_modules=args.leaf,
                   replace=replace_arg(args.replace), replace_mode=args.replace_mode,
                   max_cut_tensors=args.max_cut_tensors, tolerance=args.tolerance)
    x = torch.randn(args.batch, *size)
    if args.max_batch:
        p = max_batch(model, x, args.blocks, memory_budget=args.budget, optimizer=args.optimizer,
                      split_points=args.split_points, **options)
    else:
        p = make_plan(model, x, args.blocks, split_points=args.split_points, memory_budget=args.budget,
                      optimizer=args.optimizer, **options)
    print(p.to_json() if args.json else p.table())
    if args.budget is not None and not args.json:
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
    file is written only if it passes.
    """
    import torch

    from ..api.onnx_export import export_onnx
    from ..programs.train import load_checkpoint_model

    if os.path.isfile(args.model):
        model, config = load_checkpoint_model(args.model)
        size = args.input_size or (3, config.input_size, config.input_size)
    else:
        model, size = _model_and_size(args)
    report = export_onnx(model, args.out, torch.randn(args.batch, *size), dynamic_batch=not args.static_batch,
                         verify=not args.no_verify)
    print(report)
    return 0


def bench(args: argparse.Namespace) -> int:
    """Memory and step time: E2E vs activation checkpointing vs local training.

    In one process, train MODEL for --steps timed steps (after --warmup) end to end, with
    activation checkpointing over the same K segments (use_reentrant=False), and with local
    losses; print median step time, peak saved activations (the plan's prediction beside it) and
    peak RSS (CPU) or max_memory_allocated (CUDA), each as a ratio to E2E.
    """
    from ..programs import bench as programs_bench
    from ..programs.models import create_model

    _, size = _model_and_size(args)
    results = []
    for k in args.blocks:
        result = programs_bench.run(
            lambda: create_model(args.model), args.model, k, recipe=args.recipe, batch=args.batch, input_size=size,
            device=args.device, steps=args.steps, warmup=args.warmup, replace=replace_arg(args.replace),
            channels_last=args.channels_last, amp=args.amp,
        )
        print(result.table(), end="\n\n", flush=True)
        results.append(result.to_dict())
    if args.json:
        write_text(args.json, json.dumps(results, indent=2))
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


def coverage(args: argparse.Namespace) -> int:
    """Run every stage (trace … ONNX parity) over timm models, one process each.

    For each timm model matching --filter, in its own process under --timeout: create, check
    that timm itself can fx-trace it (else excluded), trace, plan K=4, convert, one local
    training step, eval parity with the original, ONNX export parity. Prints a markdown report
    (summary, per family, every failure with its stage and reason). Exit status 1 if any
    traceable model fails.
    """
    import platform
    import time

    import torch
    from tqdm.auto import tqdm

    from ..programs import coverage as programs_coverage

    names = programs_coverage.select(args.filter)
    if not names:
        raise SplitFXError(f"--filter {args.filter!r} matches no timm model")
    began = time.time()
    bar = tqdm(total=len(names), desc="models", disable=None)
    counts = {"pass": 0, "fail": 0, "timeout": 0, "excluded": 0}

    def progress(outcome):
        counts[outcome.status] += 1
        bar.update(1)
        bar.set_postfix(counts)

    results = programs_coverage.sweep(names, args.jobs, args.timeout, progress)
    bar.close()
    header = (f"Coverage of `timm.list_models({args.filter!r})` — produced by `splitfx coverage --filter "
              f"'{args.filter}' --jobs {args.jobs} --timeout {args.timeout:.0f}` "
              f"on {platform.node() or 'this machine'} "
              f"({os.cpu_count()} CPUs, torch {torch.__version__}), {time.time() - began:.0f} s.")
    text = programs_coverage.report(results, header)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0 if all(r.status in ("pass", "excluded") for r in results) else 1


def _train_config(args: argparse.Namespace, model: str | None, blocks: int | None):
    from ..programs.train import TrainConfig

    c, h, w = args.input_size or (3, 32, 32)
    if c != 3 or h != w:
        raise SplitFXError(f"--input-size {c} {h} {w}: training images are square with 3 channels; give one size S")
    return TrainConfig(model=model, blocks=blocks, recipe=args.recipe, epochs=args.epochs, batch=args.batch,
                       data=args.data, input_size=h, device=args.device, amp=args.amp, lr=args.lr, seed=args.seed)


def train(args: argparse.Namespace) -> int:
    """Train a model block by block on the embedded digits (or your data).

    Convert MODEL and train it with local losses, one gradient-isolated block at a time. Prints
    per-epoch train loss and test accuracy, and the measured peak of saved activations next to
    what E2E training would save. Writes OUT/checkpoint.pt after every epoch (atomically) and
    OUT/metrics.json at the end; --resume continues a checkpoint bit-exactly on CPU (its model,
    recipe, data and seed are used; --epochs is the total).
    """
    from ..programs.train import train as run_training

    run_training(_train_config(args, args.model, args.blocks), out=args.out, resume=args.resume)
    return 0


def accuracy(args: argparse.Namespace) -> int:
    """Table of test accuracy: E2E vs recipes at several K.

    Train every (MODEL, recipe, K) with the same data, epochs and seed and print a markdown
    table of final test accuracy (peak saved activations in brackets).
    """
    from ..programs import accuracy as programs_accuracy

    rows = programs_accuracy.run(args.models, args.recipes, args.blocks_list, _train_config(args, None, None))
    text = programs_accuracy.markdown(rows, args.blocks_list)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0
