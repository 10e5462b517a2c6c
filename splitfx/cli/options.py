"""Option groups shared by the commands, each defined once: model, input size, batch, device, split.

Every value is checked by its ``type=`` when the command line is parsed, before any work starts, and
a bad one is one line (``splitfx: error: argument --batch: ...``): the parser raises
:class:`UsageError` instead of printing its usage and exiting.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
from collections.abc import Callable
from typing import Any

from ..api.planning import MAX_CUT_TENSORS
from ..base.errors import SplitFXError
from ..base.files import unwritable
from ..base.sizes import parse_bytes
from ..passes.sharing import Tied
from ..planner.balance import Method
from ..programs.config import TrainConfig, resolve_device
from ..programs.data import check as check_data
from ..programs.models import check_model
from ..recipes import list_recipes

EPILOG = """Models: any timm name (resnet50, vit_base_patch16_224, ...), torchvision:NAME, or
package.module:factory for your own model. Weights are random: nothing is downloaded."""
MODEL_HELP = "timm name, torchvision:NAME or package.module:factory"
METHODS = tuple(m.value for m in Method)
TIED = tuple(t.value for t in Tied)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class UsageError(SplitFXError):
    """A command line argparse refuses (unknown option, bad value, missing argument)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line through the CLI's error boundary."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _checked(check: Callable[[str], object], name: str) -> Callable[[str], object]:
    """A ``type=`` from a check that raises :class:`SplitFXError` (argparse reports ArgumentTypeError)."""
    def parse(text: str):
        try:
            return check(text)
        except SplitFXError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name
    return parse


def number(kind: type, least: float, what: str, below: float = float("inf")) -> Callable[[str], object]:
    """A ``type=`` for numbers in ``[least, below)`` (``below`` excluded; infinity is refused too)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not least <= value < below:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = number(int, 1, "a positive integer")
count = number(int, 0, "an integer ≥ 0")
positive_float = number(float, 1e-300, "a positive number")
count_fraction = number(float, 0.0, "a fraction ≥ 0, such as 0.05")


def memory_size(text: str) -> str:
    """``--budget 4GiB``: checked here, parsed by the API."""
    try:
        parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _writable_parent(path: str) -> None:
    """``path`` can be written (:func:`~splitfx.base.files.unwritable`; missing folders are made)."""
    why = unwritable(path)
    if why:
        raise SplitFXError(f"{path}: {why}")


def _output_file(path: str) -> str:
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise SplitFXError(f"{path!r} is a folder; give a file name such as {os.path.join(path or '.', 'out')}...")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise SplitFXError(f"{path}: the file is read-only; choose another path")
    _writable_parent(path)
    return path


def _picture(path: str) -> str:
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext and ext not in formats:
        raise SplitFXError(f"{path}: matplotlib cannot write .{ext} pictures; use .png, .svg or .pdf")
    return _output_file(path)


def _output_dir(path: str) -> str:
    if os.path.exists(path) and not os.path.isdir(path):
        raise SplitFXError(f"{path} is a file; --out takes a folder for the run (checkpoint.pt, metrics.jsonl, ...)")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise SplitFXError(f"{path}: cannot write in this folder (permission denied); choose another --out")
    _writable_parent(path)
    return path


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise SplitFXError(f"{path}: {'a folder' if os.path.isdir(path) else 'no such file'}; give the "
                           "checkpoint.pt that splitfx train wrote in its run folder")
    return path


def _model_or_checkpoint(text: str) -> str:
    if os.path.isfile(text):
        return text
    if os.sep in text or text.endswith(CHECKPOINT_SUFFIXES):
        return _existing_file(text)
    check_model(text)
    return text


def _model(text: str) -> str:
    check_model(text)
    return text


output_file = _checked(_output_file, "output file")
picture_file = _checked(_picture, "picture file")
output_dir = _checked(_output_dir, "output folder")
checkpoint_file = _checked(_existing_file, "checkpoint")
model_spec = _checked(_model, "model")
model_or_checkpoint = _checked(_model_or_checkpoint, "model or checkpoint")
device = _checked(resolve_device, "device")
data_spec = _checked(lambda text: check_data(text) or text, "data")


def add_model(p: argparse.ArgumentParser, default: str | None = None, many: bool = False,
              resumable: bool = False) -> None:
    """The ``MODEL`` positional (optional when there is a default; several with ``many``). With
    ``resumable`` its value is None when not given, so ``--resume`` can tell it from the default."""
    if many:
        p.add_argument("models", nargs="*", metavar="MODEL", default=[default], type=model_spec,
                       help=f"one or more models: {MODEL_HELP} (default {default})")
    elif default is not None:
        p.add_argument("model", nargs="?", metavar="MODEL", default=None if resumable else default, type=model_spec,
                       help=f"{MODEL_HELP} (default {default})")
    else:
        p.add_argument("model", metavar="MODEL", type=model_spec, help=MODEL_HELP)


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
    p.add_argument("--input-size", nargs="+", type=positive_int, action=_InputSize, metavar="N",
                   help=f"input size: S for 3×S×S, or C H W (default: {default})")


def add_batch(p: argparse.ArgumentParser, default: int | None, what: str = "batch size") -> None:
    shown = TrainConfig.batch if default is None else default
    p.add_argument("--batch", "-b", type=positive_int, default=default, help=f"{what} (default {shown})")


def add_example_input(p: argparse.ArgumentParser, batch: int, what: str,
                      size: str = "the model's own, else 3 224 224") -> None:
    """The example input a command builds: ``--input-size`` and ``--batch``."""
    add_input_size(p, size)
    add_batch(p, batch, what)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=device,
                   help="torch device: auto (cuda where there is one, else cpu), cpu, cuda, cuda:1, ... "
                        "(default %(default)s)")


def add_recipe(p: argparse.ArgumentParser, default: str, what: str = "local-learning recipe",
               resumable: bool = False) -> None:
    """``--recipe``, its choices the registered recipes (built-in and installed), and its options."""
    p.add_argument("--recipe", default=None if resumable else default, choices=list_recipes(),
                   help=f"{what} (default {default})")
    add_recipe_options(p)


def recipe_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (KEY, VALUE), the value a Python literal (``(5, 0)``, ``3``, ``0.99``, ``'text'``);
    a bare word is a string."""
    key, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, such as lambda1=(5,0) or n=3")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if value.isidentifier():
            return key, value
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a Python literal (a number, a tuple such "
                                         "as (5, 0), True, 'text')") from None


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """``--recipe-option KEY=VALUE``, repeatable (once per parser: ``train`` gets it from ``--recipe``,
    ``accuracy`` from its training options)."""
    with contextlib.suppress(argparse.ArgumentError):  # this parser has it already
        p.add_argument("--recipe-option", action="append", type=recipe_option, dest="recipe_options",
                       metavar="KEY=VALUE", help="a recipe option, the value a Python literal; repeatable: "
                       "--recipe-option lambda1=(5,0) --recipe-option lambda2=(0,1)")


class _Replace(argparse.Action):
    """``--replace 3`` → 3 (at least 2), ``--replace a b`` → ["a", "b"]."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and values[0].lstrip("+-").isdigit():
            values = int(values[0])
            if values < 2:
                parser.error(f"argument {option_string}: N takes every N-th block and must be at least 2, got {values}")
        setattr(namespace, self.dest, values)


def add_results(p: argparse.ArgumentParser, default: str, each: str, resume: str) -> None:
    """``--results FILE``, the JSON-lines file ``each`` result is appended to as it finishes, and
    ``--resume``, which reuses what it holds (``resume`` says which)."""
    p.add_argument("--results", default=default, metavar="FILE",
                   help=f"JSON-lines file {each} is appended to as it finishes (default %(default)s)")
    p.add_argument("--resume", action="store_true", help=resume)


def add_replace(p: argparse.ArgumentParser, help: str, flag: str = "--replace") -> None:
    p.add_argument(flag, nargs="+", metavar="N|MODULE", action=_Replace, help=help)


def add_blocks(p: argparse.ArgumentParser, default: int | None, help: str = "number of gradient-isolated blocks",
               **kwargs) -> None:
    shown = TrainConfig.blocks if default is None else default
    p.add_argument("--blocks", "-k", type=positive_int, default=default, help=f"{help} (default {shown})", **kwargs)


def add_max_cut_tensors(p: argparse.ArgumentParser, default: int | None) -> None:
    """``--max-cut-tensors``; ``default`` None where a resumed checkpoint supplies the value."""
    p.add_argument("--max-cut-tensors", type=positive_int, default=default, metavar="N",
                   help=f"most tensors one cut may hand over; 1 cuts only where one tensor is live (between "
                        f"residual units), less evenly balanced (default {MAX_CUT_TENSORS})")


def add_split(p: argparse.ArgumentParser) -> None:
    """How the model is cut: ``--blocks``, ``--method``, ``--split-points``, ``--recipe``, ``--leaf``, RepL."""
    add_blocks(p, 4)
    p.add_argument("--method", default="memory", choices=METHODS,
                   help="what the blocks are balanced by (default %(default)s)")
    p.add_argument("--split-points", nargs="+", metavar="MODULE",
                   help="cut right after these modules instead of balancing (overrides --blocks)")
    add_recipe(p, "linear", "aux-head recipe whose heads are costed")
    p.add_argument("--leaf", nargs="+", default=[], metavar="MODULE", help="module names to keep opaque when tracing")
    p.add_argument("--no-auto-leaf", dest="auto_leaf", action="store_false",
                   help="fail instead of keeping a submodule fx cannot trace whole (as a leaf)")
    add_replace(p, "RepL: replace every N-th interior block of each run of identical blocks (one integer ≥ 2), "
                   "or the blocks named; their weights are synthesised from their neighbours")
    add_max_cut_tensors(p, MAX_CUT_TENSORS)
    p.add_argument("--tied", default="together", choices=TIED,
                   help="a weight used in several places (tied embedding and output layer): one block trains it "
                        "('together'), or later blocks read it detached ('detach') (default %(default)s)")
    p.add_argument("--tolerance", type=count_fraction, default=0.05,
                   help="prefer fewer multi-tensor cuts among splits within this fraction of the best balance "
                        "(default %(default)s)")
    p.add_argument("--replace-mode", default="tensor", choices=("tensor", "channel"),
                   help="RepL fusion coefficients: one (a, b) per tensor or per output channel (default %(default)s)")
