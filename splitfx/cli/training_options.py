"""The training options ``train`` and ``accuracy`` share: data, epochs, optimisation, seed, validation."""
from __future__ import annotations

import argparse

from ..programs.config import TrainConfig
from .options import (
    add_batch,
    add_device,
    add_input_size,
    add_recipe_options,
    checkpoint_file,
    count,
    data_spec,
    number,
    positive_float,
    positive_int,
)

unit_fraction = number(float, 1e-300, "a number in (0, 1]", below=1 + 1e-12)
validation_fraction = number(float, 0.0, "a fraction in [0, 1), such as 0.15", below=1.0)


def add_training(p: argparse.ArgumentParser) -> None:
    """What ``train`` and ``accuracy`` share: data, epochs, optimisation, seed. Defaults are
    :class:`TrainConfig`'s, applied after parsing (None here: ``--resume`` sees what was given)."""
    c = TrainConfig
    add_recipe_options(p)
    p.add_argument("--epochs", type=positive_int, help=f"epochs; with --resume the total (default {c.epochs})")
    add_batch(p, None)
    p.add_argument("--data", type=data_spec,
                   help="digits (embedded scikit-learn digits, no download), cluttered (the same digits at random "
                        "places and scales among fragments of others on 64² canvases, generated offline; 20,000 "
                        "training and 10,000 test images), cifar10:DIR (CIFAR-10 python "
                        "batches already in DIR) or imagefolder:DIR (DIR/train and DIR/val); for regression "
                        "diabetes, friedman or friedman2 (embedded); digits@S and diabetes@S: their S-th random "
                        f"train/test split; default {c.data}")
    p.add_argument("--task", choices=("classification", "regression"),
                   help="what the targets are: class indices, or one value per sample (--data diabetes, friedman or "
                        "friedman2, embedded; RMSE and MAE reported in the target's units); default: the data's")
    add_input_size(p, f"{c.input_size}: digits are upsampled to 3×{c.input_size}×{c.input_size}; regression data: "
                      "the number of features")
    add_device(p)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast: float16 + GradScaler on CUDA, bfloat16 on CPU (--no-amp: resume without it)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="train on images in the channels-last (NHWC) memory format: the same computation, faster "
                        "where the convolutions prefer it (oneDNN on CPU, tensor cores on CUDA); results differ by "
                        "floating-point rounding only (--no-channels-last: resume without it)")
    p.add_argument("--lr", type=positive_float,
                   help=f"AdamW learning rate, ×{c.lr_decay} after every epoch (default {c.lr})")
    p.add_argument("--lr-decay", type=unit_fraction, metavar="FACTOR",
                   help=f"learning rate factor applied after every epoch (default {c.lr_decay})")
    p.add_argument("--seed", type=count, help=f"seed for initialisation and data order (default {c.seed})")
    p.add_argument("--validation", type=validation_fraction, metavar="FRACTION",
                   help="hold out this fraction of the training images (stratified, the same images in every "
                        "run) and evaluate epochs on them; the test images are then read once, after training "
                        f"(default {c.validation}: no validation split, epochs evaluated on test)")
    p.add_argument("--teacher", metavar="CKPT", type=checkpoint_file,
                   help="with --recipe tandem: the trained model each block learns to reproduce, a splitfx train "
                        "checkpoint or a timm checkpoint of MODEL's architecture")
    add_spiking(p)
    p.add_argument("--max-batches", type=positive_int, metavar="N",
                   help="train at most N batches per epoch, for a quick trial (default: the whole training set)")


def add_spiking(p: argparse.ArgumentParser) -> None:
    """``--spiking T``: MODEL as a spiking network (``splitfx.spiking``)."""
    p.add_argument("--spiking", type=positive_int, metavar="T",
                   help="make MODEL spiking: its ReLUs become LIF neurons (snntorch) run over T time steps, the "
                        "input fed at every step (LTL uses 16; train it with --recipe tandem)")
