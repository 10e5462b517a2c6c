"""Checks the commands make before any work starts, beyond what each option's ``type=`` checks alone:
options that depend on each other (``--resume`` against the options given), and requests that only a
cheap plan can refuse (``accuracy``'s largest K)."""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any

from ..base.errors import PlanError, SplitFXError
from ..programs.checkpoint import Checkpoint
from ..programs.config import TrainConfig, check_options_used, with_all_options
from ..recipes.registry import recipe_class
from .options import UsageError

# TrainConfig fields the command line sets, when given (None: not given).
GIVEN = ("model", "blocks", "recipe", "epochs", "batch", "data", "device", "amp", "channels_last", "lr",
         "lr_decay", "seed", "validation", "max_batches", "max_cut_tensors", "cuts", "task", "teacher", "spiking",
         "method", "detach", "replace")


def recipe_from(args: argparse.Namespace):
    """``--recipe`` made with its ``--recipe-option`` values (its name alone when none is given)."""
    from ..recipes import create_recipe

    options = recipe_options(args)
    return create_recipe(args.recipe, **options) if options else args.recipe


def recipe_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--recipe-option`` values as a dict; None when none was given (``--resume`` keeps the
    checkpoint's). A key given twice is an error."""
    pairs = getattr(args, "recipe_options", None)
    if pairs is None:
        return None
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in options:
            raise UsageError(f"--recipe-option {key} is given twice ({options[key]!r} and {value!r})")
        options[key] = value
    return options


def train_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (the defaults, or a resumed checkpoint's config) with the options given on the command
    line; recipe options given are added to the base's."""
    given = {name: getattr(args, name, None) for name in GIVEN}
    options = recipe_options(args)
    given["recipe_options"] = None if options is None else {**(base.recipe_options if base else {}), **options}
    given["cuts"] = tuple(args.cuts) if getattr(args, "cuts", None) else None
    if args.input_size is not None:
        c, h, w = args.input_size
        if c != 3 or h != w:
            raise SplitFXError(f"--input-size {c} {h} {w}: training images are square with 3 channels; "
                               "give one size S")
        given["input_size"] = h
    return with_task(replace(base or TrainConfig(), **{k: v for k, v in given.items() if v is not None}),
                     getattr(args, "task", None), args.input_size is not None)


def with_task(config: TrainConfig, task: str | None, size_given: bool) -> TrainConfig:
    """``config`` with the task of its data (``task``, the ``--task`` given, must be it) and, for
    regression data, its number of features as the input size unless ``--input-size`` was given."""
    from ..programs.data import FEATURES, regression

    table = regression(config.data)
    kind = "regression" if table is not None else "classification"
    if task is not None and task != kind:
        data = (f"one of {', '.join(FEATURES)}" if kind == "classification"
                else "digits, cluttered, cifar10:DIR or imagefolder:DIR")
        raise UsageError(f"--task {task}: --data {config.data} is {kind} data; for {task} give --data {data}")
    config = replace(config, task=kind)
    return replace(config, input_size=FEATURES[table[0]]) if table is not None and not size_given else config


def train_run(args: argparse.Namespace) -> tuple[TrainConfig, Checkpoint | None, str | None]:
    """The config, the checkpoint to resume (loaded and checked) and the run folder of ``splitfx train``
    (None: a new run's default folder, chosen when it is reserved). Resuming, what is not given comes
    from the checkpoint; what is given must agree with it."""
    from ..programs.train import open_resume

    if args.resume is None:
        config = with_all_options(train_config(args))
        if config.teacher is None and not config.make_recipe().traits.predicts:
            raise SplitFXError(f"--recipe {config.recipe} learns from a trained teacher: give --teacher CKPT (a "
                               "splitfx train checkpoint, or a timm checkpoint of MODEL); without one its blocks "
                               "would learn the features of MODEL as randomly initialised")
        if not config.detach:
            from ..recipes.deep_supervision import check_supervisable

            check_supervisable(config.make_recipe())
        return config, None, args.out
    state = Checkpoint.load(args.resume)
    known = {k: v for k, v in state.config.items() if k in TrainConfig.__dataclass_fields__}
    config = with_all_options(train_config(args, TrainConfig(**known)))
    open_resume(state, config, args.resume)  # --epochs not given: the interrupted run's own total
    # Through a symlink (latest.pt → runs/x/checkpoint.pt) the run continues in the folder it points into.
    return config, state, args.out or os.path.dirname(os.path.realpath(args.resume))


def input_size(model: Any, size: tuple[int, int, int], given: bool = True) -> None:
    """Refuse ``--input-size`` (or, not ``given``, the default size) before any tracing where the model
    fails on it but runs on a size it declares (:func:`splitfx.api.input_shape.shape_mismatch`, which
    ``plan(model, x)`` uses too)."""
    import torch

    from ..api.input_shape import shape_mismatch

    declared = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if given and declared is not None and len(declared) != 3:
        raise UsageError(f"--input-size {_size_option(size)}: it gives an image size, and the model declares "
                         f"inputs of shape {tuple(declared)} (its pretrained_cfg); leave --input-size out")
    found = shape_mismatch(model, torch.empty(2, *size))
    if found is not None:
        what = f"--input-size {_size_option(size)}"
        what = what if given else f"--input-size not given (default {_size_option(size)})"
        raise UsageError(f"{what}: {found}; pass --input-size {_size_option(found.expected)}")


def model_and_size(args: argparse.Namespace) -> tuple[Any, tuple[int, ...]]:
    """The model and its (C, H, W) input: ``--input-size``, checked against the model, or its own."""
    from ..programs.models import create_model, default_input_size

    model = create_model(args.model)
    size = args.input_size or default_input_size(model)
    input_size(model, size, given=args.input_size is not None)
    if getattr(args, "spiking", None):
        from ..passes.snn import spiking

        model = spiking(model, args.spiking)
    return model, size


def _size_option(size: tuple[int, ...]) -> str:
    """(C, H, W) as ``--input-size`` takes it: S where it is 3×S×S."""
    c, h, w = size
    return f"{h}" if c == 3 and h == w else f"{c} {h} {w}"


def accuracy(models: list[str], recipes: list[str], blocks: list[int], config: TrainConfig,
             controls: list[str] = (), lr_at: int | None = None, repl: int | list[str] | None = None,
             repl_recipes: list[str] = ()) -> None:
    """Refuse, before the first run trains, a recipe option no recipe takes, a control for a recipe
    not in the table or without a deep-supervised twin, RepL without its recipes (or the other way
    round) or with nothing to replace, and a K that a model cannot be split into."""
    import torch

    from ..api.planning import plan
    from ..programs.epochs import build_model
    from ..recipes import create_recipe
    from ..recipes.deep_supervision import check_supervisable

    check_options_used(recipes, config.recipe_options)
    if lr_at is not None and lr_at not in blocks:
        raise UsageError(f"--lr-at {lr_at}: the rate is searched at one of the table's K "
                         f"({' '.join(map(str, blocks))})")
    if (repl is None) != (not repl_recipes) or not set(repl_recipes) <= set(recipes):
        raise UsageError("--repl N and --repl-recipes R ... go together, R among --recipes "
                         f"({' '.join(recipes)}): the recipes whose cells also run with RepL")
    for name in controls:
        if name not in recipes or name == "e2e":
            raise UsageError(f"--controls {name}: controls are run for recipes of the table other than e2e "
                             f"({', '.join(r for r in recipes if r != 'e2e')})")
        check_supervisable(create_recipe(name))
    regressing = [r for r in recipes if recipe_class(r).traits.infers]
    if regressing or config.task == "regression":
        raise UsageError(f"accuracy tables compare classification accuracy, and {regressing or '--task regression'} "
                         "regresses; for FFR against backprop run python -m splitfx.programs.ffr_results")
    k = max(blocks)
    for name in models:
        model = build_model(name, 10, config.input_size)
        if repl is not None:  # refuses a model RepL would replace nothing in, naming its runs
            plan(model, torch.randn(2, 3, config.input_size, config.input_size), 1, replace=repl)
        if not any(r != "e2e" for r in recipes):
            continue
        try:
            plan(model, torch.randn(2, 3, config.input_size, config.input_size), k)
        except PlanError as err:
            hint = f" (at most {err.max_blocks})" if err.max_blocks else ""
            raise SplitFXError(f"accuracy: {name} cannot be split into K={k} blocks{hint}: {err}. Nothing was "
                               "trained; give smaller --blocks") from err
