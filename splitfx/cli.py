"""The ``splitfx`` command line."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .errors import SplitFXError
from .io import write_text

_EPILOG = """Models: any timm name (resnet50, vit_base_patch16_224, ...), torchvision:NAME, or
package.module:factory for your own model. Weights are random: nothing is downloaded."""


def _add_model_args(p: argparse.ArgumentParser, blocks: int = 4) -> None:
    p.add_argument("model", help="timm name, torchvision:NAME or package.module:factory")
    p.add_argument("--blocks", "-k", type=int, default=blocks, help="number of gradient-isolated blocks (default %(default)s)")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"),
                   help="input size (default: the model's own, else 3 224 224)")
    p.add_argument("--batch", "-b", type=int, default=8, help="batch size the memory is predicted for (default %(default)s)")
    p.add_argument("--method", default="memory", choices=("memory", "flops", "params", "uniform"),
                   help="what the blocks are balanced by (default %(default)s)")
    p.add_argument("--split-points", nargs="+", metavar="MODULE",
                   help="cut right after these modules instead of balancing (overrides --blocks)")
    p.add_argument("--recipe", default="linear", help="aux-head recipe whose heads are costed (default %(default)s)")
    p.add_argument("--leaf", nargs="+", default=[], metavar="MODULE", help="module names to keep opaque when tracing")
    p.add_argument("--replace", nargs="+", metavar="N|MODULE",
                   help="RepL: replace every N-th interior block of each run of identical blocks (one integer ≥ 2), "
                        "or the blocks named; their weights are synthesised from their neighbours")
    p.add_argument("--replace-mode", default="tensor", choices=("tensor", "channel"),
                   help="RepL fusion coefficients: one (a, b) per tensor or per output channel (default %(default)s)")


def _replace_arg(values: list[str] | None) -> int | list[str] | None:
    if values and len(values) == 1 and values[0].isdigit():
        return int(values[0])
    return values


def _example(model, args):
    import torch

    from .models import default_input_size

    size = tuple(args.input_size) if args.input_size else default_input_size(model)
    return torch.randn(args.batch, *size)


def _cmd_plan(args: argparse.Namespace) -> int:
    from . import plan as make_plan
    from .models import create_model

    model = create_model(args.model)
    p = make_plan(model, _example(model, args), args.blocks, args.method, args.split_points, args.recipe,
                  leaf_modules=args.leaf, replace=_replace_arg(args.replace), replace_mode=args.replace_mode)
    if args.json:
        print(p.to_json())
    else:
        print(p.table())
    if args.plot:
        p.plot(args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import os

    import torch

    from .export import export_onnx
    from .models import create_model, default_input_size
    from .train import load_checkpoint_model

    if os.path.isfile(args.model):
        model, config = load_checkpoint_model(args.model)
        size = (3, config.input_size, config.input_size)
    else:
        model = create_model(args.model)
        size = default_input_size(model)
    size = tuple(args.input_size) if args.input_size else size
    report = export_onnx(model, args.out, torch.randn(args.batch, *size), dynamic_batch=not args.static_batch,
                         verify=not args.no_verify)
    print(report)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from . import bench
    from .models import create_model, default_input_size

    size = tuple(args.input_size) if args.input_size else default_input_size(create_model(args.model))
    results = []
    for k in args.blocks:
        result = bench.run(lambda: create_model(args.model), args.model, k, args.recipe, args.batch, size,
                           args.device, args.steps, args.warmup, _replace_arg(args.replace), args.channels_last, args.amp)
        print(result.table(), end="\n\n", flush=True)
        results.append(result.to_dict())
    if args.json:
        write_text(args.json, json.dumps(results, indent=2))
    return 0


def _cmd_bench_convert(args: argparse.Namespace) -> int:
    import torch

    from .bench import conversion_time
    from .models import create_model

    specs = [(f"vit_base_patch16_224 depth={d}", lambda d=d: create_model("vit_base_patch16_224", depth=d)) for d in args.vit_depths]
    specs += [(name, lambda name=name: create_model(name)) for name in args.models]
    print(f"{'model':<30} {'nodes':>6} {'params':>8} {'trace s':>8} {'plan s':>7} {'convert s':>9}")
    for name, factory in specs:
        t = conversion_time(factory(), name, torch.randn(args.batch, 3, 224, 224), args.blocks)
        print(f"{t.model:<30} {t.nodes:>6} {t.params / 1e6:>7.1f}M {t.trace_s:>8.2f} {t.plan_s:>7.2f} {t.convert_s:>9.2f}", flush=True)
    return 0


def _cmd_coverage(args: argparse.Namespace) -> int:
    import os
    import platform
    import time

    import torch
    from tqdm.auto import tqdm

    from . import coverage

    names = coverage.select(args.filter)
    if not names:
        raise SplitFXError(f"--filter {args.filter!r} matches no timm model")
    began = time.time()
    bar = tqdm(total=len(names), desc="models", disable=None)
    counts = {"pass": 0, "fail": 0, "timeout": 0, "excluded": 0}

    def progress(outcome):
        counts[outcome.status] += 1
        bar.update(1)
        bar.set_postfix(counts)

    results = coverage.sweep(names, args.jobs, args.timeout, progress)
    bar.close()
    header = (f"Coverage of `timm.list_models({args.filter!r})` — produced by `splitfx coverage --filter "
              f"'{args.filter}' --jobs {args.jobs} --timeout {args.timeout:.0f}` on {platform.node() or 'this machine'} "
              f"({os.cpu_count()} CPUs, torch {torch.__version__}), {time.time() - began:.0f} s.")
    text = coverage.report(results, header)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0 if all(r.status in ("pass", "excluded") for r in results) else 1


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        model=args.model, blocks=args.blocks, recipe=args.recipe, epochs=args.epochs, batch=args.batch,
        data=args.data, input_size=args.input_size, device=args.device, amp=args.amp, lr=args.lr, seed=args.seed,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    train(_train_config(args), out=args.out, resume=args.resume)
    return 0


def _cmd_accuracy(args: argparse.Namespace) -> int:
    from . import accuracy

    rows = accuracy.run(args.models, args.recipes, args.blocks_list, _train_config(args))
    text = accuracy.markdown(rows, args.blocks_list)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .recipes import RECIPES

    p.add_argument("--epochs", type=int, default=10, help="epochs (default %(default)s)")
    p.add_argument("--batch", "-b", type=int, default=64, help="batch size (default %(default)s)")
    p.add_argument("--data", default="digits",
                   help="digits (embedded scikit-learn digits, no download), cifar10:DIR (CIFAR-10 python "
                        "batches already in DIR) or imagefolder:DIR (DIR/train and DIR/val); default %(default)s")
    p.add_argument("--input-size", type=int, default=32, help="square input size; digits are upsampled to it (default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--amp", action="store_true", help="autocast: float16 + GradScaler on CUDA, bfloat16 on CPU")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate, ×0.8 after every epoch (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default %(default)s)")
    p.add_argument("--recipe", default="infopro", choices=sorted(RECIPES), help="local-learning recipe (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitfx",
        description="Split a model into memory-balanced, gradient-isolated blocks for local learning.",
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "plan", help="show how a model would be split and what each block costs",
        description="Trace MODEL, predict per-node saved activations and FLOPs under FakeTensorMode (no "
                    "real compute), and print the memory-balanced split: per block the module span, "
                    "parameters, predicted saved activation bytes (aux head included), FLOPs, and the "
                    "predicted peak of E2E vs local training.",
        epilog=_EPILOG,
    )
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the plan to this image file")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "train", help="train a model block by block on the embedded digits (or your data)",
        description="Convert MODEL and train it with local losses, one gradient-isolated block at a time. "
                    "Prints per-epoch train loss and test accuracy, and the measured peak of saved "
                    "activations next to what E2E training would save. Writes OUT/checkpoint.pt after every "
                    "epoch (atomically) and OUT/metrics.json at the end; --resume continues a checkpoint "
                    "bit-exactly on CPU (its model, recipe, data and seed are used; --epochs is the total).",
        epilog=_EPILOG,
    )
    p.add_argument("--model", default="resnet18", help="timm name, torchvision:NAME or package.module:factory (default %(default)s)")
    p.add_argument("--blocks", "-k", type=int, default=4, help="number of gradient-isolated blocks (default %(default)s)")
    _add_train_args(p)
    p.add_argument("--out", help="folder for checkpoint.pt and metrics.json (default: write nothing)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint written by --out")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "export", help="export a model or a splitfx train checkpoint to ONNX, verified with onnxruntime",
        description="Export the eval-mode model (no aux heads, no detach nodes, RepL folded) with the dynamo "
                    "exporter and a dynamic batch dimension, then run it in onnxruntime at two batch sizes "
                    "and compare with PyTorch (fp32: max abs diff ≤ 1e-4 and identical top-1). The file is "
                    "written only if it passes.",
        epilog=_EPILOG,
    )
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                   help="a model name (random weights) or a checkpoint.pt written by splitfx train --out")
    p.add_argument("--out", "-o", required=True, metavar="FILE.onnx", help="where to write the ONNX file")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"),
                   help="input size (default: the checkpoint's or the model's own)")
    p.add_argument("--batch", "-b", type=int, default=2, help="batch size of the example input (default %(default)s)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension instead of making it dynamic")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "bench", help="memory and step time: E2E vs activation checkpointing vs local training",
        description="In one process, train MODEL for --steps timed steps (after --warmup) end to end, with "
                    "activation checkpointing over the same K segments (use_reentrant=False), and with local "
                    "losses; print median step time, peak saved activations (the plan's prediction beside "
                    "it) and peak RSS (CPU) or max_memory_allocated (CUDA), each as a ratio to E2E.",
        epilog=_EPILOG,
    )
    p.add_argument("model", help="timm name, torchvision:NAME or package.module:factory")
    p.add_argument("--blocks", "-k", type=int, nargs="+", default=[4], help="one or more K (default %(default)s)")
    p.add_argument("--recipe", default="linear", help="recipe of the local mode (default %(default)s)")
    p.add_argument("--batch", "-b", type=int, default=8, help="batch size (default %(default)s)")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"), help="input size (default: the model's own)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default %(default)s)")
    p.add_argument("--replace", nargs="+", metavar="N|MODULE", help="also run local training with RepL and compare "
                   "trainable parameters and optimizer state")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for all modes")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for all modes")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "bench-convert", help="time trace, plan and convert as the graph grows",
        description="Wall time of trace, plan (trace + fake-tensor cost probe + cuts + partition) and convert "
                    "for ViT-B/16 at several depths and for the models given.",
    )
    p.add_argument("--vit-depths", type=int, nargs="*", default=[12, 24, 48], help="ViT-B/16 depths (default %(default)s)")
    p.add_argument("--models", nargs="*", default=["resnet50", "resnet101", "resnet152"], help="more models (default %(default)s)")
    p.add_argument("--blocks", "-k", type=int, default=4, help="K (default %(default)s)")
    p.add_argument("--batch", "-b", type=int, default=8, help="batch size of the example input (default %(default)s)")
    p.set_defaults(func=_cmd_bench_convert)

    p = sub.add_parser(
        "coverage", help="run every stage (trace … ONNX parity) over timm models, one process each",
        description="For each timm model matching --filter, in its own process under --timeout: create, check "
                    "that timm itself can fx-trace it (else excluded), trace, plan K=4, convert, one local "
                    "training step, eval parity with the original, ONNX export parity. Prints a markdown "
                    "report (summary, per family, every failure with its stage and reason). Exit status 1 if "
                    "any traceable model fails.",
    )
    p.add_argument("--filter", default="*", metavar="GLOB", help="fnmatch pattern over timm.list_models() (default all)")
    p.add_argument("--jobs", "-j", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="models in parallel (default %(default)s)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per model (default %(default)s)")
    p.add_argument("--out", help="also write the report to this markdown file")
    p.set_defaults(func=_cmd_coverage)

    p = sub.add_parser(
        "accuracy", help="table of test accuracy: E2E vs recipes at several K",
        description="Train every (model, recipe, K) with the same data, epochs and seed and print a markdown "
                    "table of final test accuracy (peak saved activations in brackets).",
    )
    p.add_argument("--models", nargs="+", default=["resnet18"], help="models (default %(default)s)")
    p.add_argument("--recipes", nargs="+", default=["e2e", "linear", "dgl", "infopro", "auglocal", "man", "hpff", "mlaan"],
                   help="recipes, e2e trained once per model (default: all)")
    p.add_argument("--blocks", dest="blocks_list", nargs="+", type=int, default=[2, 4, 8], help="values of K (default %(default)s)")
    _add_train_args(p)
    p.add_argument("--out", help="also write the table to this markdown file")
    p.set_defaults(func=_cmd_accuracy, model=None, blocks=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SplitFXError as err:
        print(f"splitfx: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
