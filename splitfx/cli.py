"""The ``splitfx`` command line."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import SplitFXError

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
                  leaf_modules=args.leaf)
    if args.json:
        print(p.to_json())
    else:
        print(p.table())
    if args.plot:
        p.plot(args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


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
