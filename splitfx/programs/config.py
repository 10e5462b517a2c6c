"""What a training run is: :class:`TrainConfig` (the defaults of ``splitfx train``), devices, resume rules.

The default run is the README's main job: ResNet-18 with linear aux heads at K=4 on the embedded
digits at 32². It is chosen so that local training saves activation memory (measured: 0.57× of
E2E's saved activations, README); reconstruction heads (InfoPro, MAN, HPFF) cost more at such small inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from ..api.planning import MAX_CUT_TENSORS
from ..base.errors import ArgumentError, SplitFXError
from ..recipes import Recipe, create_recipe, list_recipes
from ..recipes.registry import describe_options, recipe_class

# May differ between a checkpoint and the run resuming it: --epochs is the new total, and where
# and how fast it runs does not change what is trained.
RESUMABLE = ("epochs", "device", "amp", "channels_last")


@dataclass
class TrainConfig:
    model: str = "resnet18"
    blocks: int = 4
    recipe: str = "linear"
    epochs: int = 10
    batch: int = 64
    data: str = "digits"
    # What the targets are: "classification" (class indices, accuracy) or "regression" (one float per
    # sample, standardised; RMSE and MAE in the target's units). With regression data ``input_size`` is
    # the number of features.
    task: str = "classification"
    input_size: int = 32
    device: str = "cpu"
    amp: bool = False
    # Images in the channels-last memory format (``--channels-last``): the model's 4-D weights and every
    # training batch (evaluation batches are converted by the first convolution). The same computation,
    # faster where the convolution kernels prefer NHWC (oneDNN on CPU, tensor cores on CUDA); results
    # differ from the default format's by floating-point rounding only.
    channels_last: bool = False
    lr: float = 2e-3
    lr_decay: float = 0.8  # per epoch; independent of ``epochs`` so a resumed run equals a straight one
    weight_decay: float = 0.05
    seed: int = 0
    # Fraction of the training images held out for validation (the same images in every run); with
    # one, epochs are evaluated on it and the test images are not read during training.
    validation: float = 0.0
    max_batches: int | None = None  # per epoch; None: the whole training set (fewer: quick trials)
    # Most tensors one cut may hand over (``plan``'s default); 1 keeps cuts where one tensor is live,
    # between residual units, at the price of a less even memory balance.
    max_cut_tensors: int = MAX_CUT_TENSORS
    # What the planner balances the blocks by (``--method``, as for ``plan``): "memory", what each
    # loss keeps alive (splitfx's plans); "uniform", the same number of ops per block (a control).
    method: str = "memory"
    # RepL fusion (``--replace``): every N-th interior unit of each run of identical units, or the
    # units named, synthesised from its neighbours' weights instead of trained (``plan``'s ``replace``).
    replace: int | list[str] | None = None
    # False (``--no-detach``): the control called deep supervision: the recipe's heads at the same cuts,
    # their losses and the model's summed into one backward, gradient flowing across the cuts.
    detach: bool = True
    # The recipe's options (``splitfx.recipe(recipe, **recipe_options)``). ``splitfx train`` records
    # every one, defaults included (:func:`with_all_options`), so a resumed run trains the same recipe.
    recipe_options: dict[str, Any] = field(default_factory=dict)
    # Where the blocks end (positions in the traced schedule), as a pipeline run placed them with its
    # stages (``train --stages S``); None: balanced by the plan. A checkpoint keeps them, so the same
    # blocks train on any number of ranks, one process included (``--cuts``).
    cuts: tuple[int, ...] | None = None
    # A trained model the ``tandem`` recipe's blocks learn to reproduce: a ``splitfx train`` checkpoint,
    # or a timm checkpoint of MODEL's architecture (``--teacher``).
    teacher: str | None = None
    # Time steps of a spiking student (``--spiking T``): its ReLUs become LIF neurons (splitfx.spiking).
    spiking: int | None = None

    def make_recipe(self, teacher: nn.Module | None = None) -> Recipe:
        """The recipe this run trains with: ``recipe`` made with ``recipe_options`` (and ``teacher``,
        the model ``--teacher`` names, loaded)."""
        if teacher is None:
            return create_recipe(self.recipe, **self.recipe_options)
        if "teacher" not in recipe_class(self.recipe).option_defaults():
            raise ArgumentError(f"--teacher: recipe {self.recipe!r} learns from no teacher; use --recipe tandem")
        return create_recipe(self.recipe, **{**self.recipe_options, "teacher": teacher})


def with_all_options(config: TrainConfig) -> TrainConfig:
    """``config`` with every option of its recipe recorded (the given ones checked, defaults filled in)."""
    return replace(config, recipe_options=config.make_recipe().options())


def options_for(recipe: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options among ``options`` that ``recipe`` takes (``accuracy`` gives one set to several recipes)."""
    accepted = create_recipe(recipe).option_defaults()
    return {k: v for k, v in options.items() if k in accepted}


def check_options_used(recipes: list[str], options: dict[str, Any]) -> None:
    """Refuse an option that none of ``recipes`` takes, naming what each accepts."""
    unused = sorted(k for k in options if not any(k in create_recipe(r).option_defaults() for r in recipes))
    if unused:
        accepts = "; ".join(f"{r}: {describe_options(r)}" for r in recipes)
        raise ArgumentError(f"--recipe-option {', '.join(unused)}: none of the recipes takes it ({accepts})")


def option(name: str) -> str:
    """How the command line spells a config field: ``model`` is the positional, the rest ``--flags``."""
    if name == "recipe_options":
        return "--recipe-option"
    if name == "detach":
        return "--no-detach"
    return "MODEL" if name == "model" else "--" + name.replace("_", "-")


def with_cuts_of(config: TrainConfig, saved: dict) -> TrainConfig:
    """``config`` with a checkpoint's block cuts where it gives none: they are the blocks that were
    trained, whatever number of ranks resumes them."""
    cuts = saved.get("cuts")
    return replace(config, cuts=tuple(cuts)) if config.cuts is None and cuts is not None else config


def check_resume(config: TrainConfig, saved: dict, path: str) -> None:
    """Refuse to resume ``saved`` (a checkpoint's config) under a config that trains something else."""
    unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise SplitFXError(f"--resume {path}: the checkpoint's config has fields this splitfx does not know "
                           f"({', '.join(unknown)}); resume it with the splitfx version that wrote it")
    recipe = saved.get("recipe", config.recipe)
    if "recipe_options" not in saved and recipe in list_recipes() and create_recipe(recipe).option_defaults():
        raise SplitFXError(f"--resume {path}: the checkpoint does not record its recipe's options (it predates "
                           "them), so this splitfx cannot resume it exactly; resume it with the splitfx version "
                           "that wrote it, or start a new run")
    config = with_cuts_of(config, saved)
    differ = [f"{option(f.name)} {getattr(config, f.name)!r} (checkpoint: {saved[f.name]!r})"
              for f in fields(TrainConfig) if f.name not in RESUMABLE and f.name in saved
              and getattr(config, f.name) != saved[f.name]]
    if differ:
        raise SplitFXError(f"--resume {path}: the checkpoint was trained with other settings: {'; '.join(differ)}. "
                           "Drop these options to resume it, or start a new run without --resume")


def resolve_device(spec: str) -> str:
    """A device that exists: ``auto`` is ``cuda`` where torch sees one, else ``cpu``."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise ArgumentError(f"device {spec!r} is not a torch device; use auto, cpu, cuda or cuda:N") from err
    backend = getattr(torch, device.type, None)
    if device.type == "cpu":
        return spec
    if device.type == "meta" or backend is None or not hasattr(backend, "is_available"):
        raise ArgumentError(f"device {spec!r}: training and measuring need a real device; use auto, cpu or cuda")
    if not backend.is_available():
        raise ArgumentError(f"device {spec!r}: torch sees no {device.type} device here; use cpu or auto")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ArgumentError(f"device {spec!r}: only {count} {device.type} device(s) visible "
                            f"({device.type}:0 to {device.type}:{count - 1})")
    return spec
