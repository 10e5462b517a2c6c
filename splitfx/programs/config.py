"""What a training run is: :class:`TrainConfig` (the defaults of ``splitfx train``), devices, resume rules.

The default run is the README's main job: ResNet-18 with linear aux heads at K=4 on the embedded
digits at 32². It is chosen so that local training saves activation memory (measured: about a third
of E2E's); InfoPro's decoder upsamples back to the input and saves more than the whole backbone.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..base.errors import ArgumentError, SplitFXError

# May differ between a checkpoint and the run resuming it: --epochs is the new total, and where
# and how fast it runs does not change what is trained.
RESUMABLE = ("epochs", "device", "amp")


@dataclass
class TrainConfig:
    model: str = "resnet18"
    blocks: int = 4
    recipe: str = "linear"
    epochs: int = 10
    batch: int = 64
    data: str = "digits"
    input_size: int = 32
    device: str = "cpu"
    amp: bool = False
    lr: float = 2e-3
    lr_decay: float = 0.8  # per epoch; independent of ``epochs`` so a resumed run equals a straight one
    weight_decay: float = 0.05
    seed: int = 0
    max_batches: int | None = None  # per epoch; None: the whole training set (fewer: quick trials)


def option(name: str) -> str:
    """How the command line spells a config field: ``model`` is the positional, the rest ``--flags``."""
    return "MODEL" if name == "model" else "--" + name.replace("_", "-")


def check_resume(config: TrainConfig, saved: dict, path: str) -> None:
    """Refuse to resume ``saved`` (a checkpoint's config) under a config that trains something else."""
    unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise SplitFXError(f"--resume {path}: the checkpoint's config has fields this splitfx does not know "
                           f"({', '.join(unknown)}); resume it with the splitfx version that wrote it")
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
