"""Option groups shared by the commands, each defined once: model, input size, batch, device, split."""
from __future__ import annotations

import argparse

from ..recipes import list_recipes

EPILOG = """Models: any timm name (resnet50, vit_base_patch16_224, ...), torchvision:NAME, or
package.module:factory for your own model. Weights are random: nothing is downloaded."""
MODEL_HELP = "timm name, torchvision:NAME or package.module:factory"
METHODS = ("memory", "flops", "params", "uniform")


def add_model(p: argparse.ArgumentParser, default: str | None = None, many: bool = False) -> None:
    """The ``MODEL`` positional (optional when there is a default; several with ``many``)."""
    if many:
        p.add_argument("models", nargs="*", metavar="MODEL", default=[default],
                       help=f"one or more models: {MODEL_HELP} (default {default})")
    elif default is not None:
        p.add_argument("model", nargs="?", metavar="MODEL", default=default, help=f"{MODEL_HELP} (default %(default)s)")
    else:
        p.add_argument("model", metavar="MODEL", help=MODEL_HELP)


def _input_size(values: list[int]) -> tuple[int, int, int]:
    if len(values) == 1:
        return (3, values[0], values[0])
    if len(values) == 3:
        return tuple(values)
    raise argparse.ArgumentTypeError(f"--input-size takes S (square, 3 channels) or C H W, got {len(values)} numbers")


class _InputSize(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, _input_size(values))
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))


def add_input_size(p: argparse.ArgumentParser, default: str = "the model's own, else 3 224 224") -> None:
    """``--input-size S`` or ``--input-size C H W``, stored as (C, H, W) or None."""
    p.add_argument("--input-size", nargs="+", type=int, action=_InputSize, metavar="N",
                   help=f"input size: S for 3×S×S, or C H W (default: {default})")


def add_batch(p: argparse.ArgumentParser, default: int, what: str = "batch size") -> None:
    p.add_argument("--batch", "-b", type=int, default=default, help=f"{what} (default %(default)s)")


def add_example_input(p: argparse.ArgumentParser, batch: int, what: str,
                      size: str = "the model's own, else 3 224 224") -> None:
    """The example input a command builds: ``--input-size`` and ``--batch``."""
    add_input_size(p, size)
    add_batch(p, batch, what)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default %(default)s)")


def add_recipe(p: argparse.ArgumentParser, default: str, what: str = "local-learning recipe") -> None:
    """``--recipe``, its choices the registered recipes (built-in and installed)."""
    p.add_argument("--recipe", default=default, choices=list_recipes(), help=f"{what} (default %(default)s)")


def add_replace(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--replace", nargs="+", metavar="N|MODULE", help=help)


def replace_arg(values: list[str] | None) -> int | list[str] | None:
    """``--replace 3`` → 3, ``--replace a b`` → ["a", "b"]."""
    if values and len(values) == 1 and values[0].isdigit():
        return int(values[0])
    return values


def add_split(p: argparse.ArgumentParser) -> None:
    """How the model is cut: ``--blocks``, ``--method``, ``--split-points``, ``--recipe``, ``--leaf``, RepL."""
    p.add_argument("--blocks", "-k", type=int, default=4,
                   help="number of gradient-isolated blocks (default %(default)s)")
    p.add_argument("--method", default="memory", choices=METHODS,
                   help="what the blocks are balanced by (default %(default)s)")
    p.add_argument("--split-points", nargs="+", metavar="MODULE",
                   help="cut right after these modules instead of balancing (overrides --blocks)")
    add_recipe(p, "linear", "aux-head recipe whose heads are costed")
    p.add_argument("--leaf", nargs="+", default=[], metavar="MODULE", help="module names to keep opaque when tracing")
    add_replace(p, "RepL: replace every N-th interior block of each run of identical blocks (one integer ≥ 2), "
                   "or the blocks named; their weights are synthesised from their neighbours")
    p.add_argument("--max-cut-tensors", type=int, default=16, metavar="N",
                   help="most tensors one cut may hand over (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="prefer fewer multi-tensor cuts among splits within this fraction of the best balance "
                        "(default %(default)s)")
    p.add_argument("--replace-mode", default="tensor", choices=("tensor", "channel"),
                   help="RepL fusion coefficients: one (a, b) per tensor or per output channel (default %(default)s)")


def add_training(p: argparse.ArgumentParser) -> None:
    """What ``train`` and ``accuracy`` share: data, epochs, optimisation, seed."""
    p.add_argument("--epochs", type=int, default=10, help="epochs (default %(default)s)")
    add_batch(p, 64)
    p.add_argument("--data", default="digits",
                   help="digits (embedded scikit-learn digits, no download), cifar10:DIR (CIFAR-10 python "
                        "batches already in DIR) or imagefolder:DIR (DIR/train and DIR/val); default %(default)s")
    add_input_size(p, "32: digits are upsampled to 3×32×32")
    add_device(p)
    p.add_argument("--amp", action="store_true", help="autocast: float16 + GradScaler on CUDA, bfloat16 on CPU")
    p.add_argument("--lr", type=float, default=2e-3,
                   help="AdamW learning rate, ×0.8 after every epoch (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default %(default)s)")
