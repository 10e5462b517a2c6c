"""What one-process and distributed training share, so that their weights can be equal bit for bit:
the data order of an epoch, a batch, the optimizer set-up and the AMP dtype, and the start of a run."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..base.errors import SplitFXError, first_line
from ..passes.snn import spiking
from . import data as datasets
from .config import TrainConfig
from .models import create_model


def epoch_order(config: TrainConfig, epoch: int, size: int, pieces: int = 1) -> list[torch.Tensor]:
    """The batches (sample indices) of ``epoch`` over a training set of ``size``: a permutation from a
    generator seeded with (seed, epoch), so a resumed run sees the data an uninterrupted one does.
    Each batch is trained in ``pieces`` parts (data-parallel shards × micro-batches); a last batch
    whose smallest part would hold a single sample is left out: BatchNorm cannot train on one
    sample, and the epoch would fail at its end."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    batches = [order[i:i + config.batch] for i in range(0, size, config.batch)]
    if len(batches) > 1 and len(batches[-1]) < 2 * pieces:
        batches.pop()
    return batches[:config.max_batches]


def batch(dataset: torch.utils.data.Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of the samples ``idx``."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return tuple(t[idx] for t in dataset.tensors)
    items = [dataset[i] for i in idx.tolist()]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def on_device(config: TrainConfig, obj: torch.Tensor | nn.Module) -> torch.Tensor | nn.Module:
    """A training batch's tensor, or the run's module, on the run's device in the run's memory format:
    under ``--channels-last`` 4-D tensors (a module's 4-D parameters and buffers) channels-last; the
    rest as they are (5-D ones too: torch's channels-last is for 4-D tensors)."""
    if isinstance(obj, torch.Tensor):
        last = config.channels_last and obj.dim() == 4
        return obj.to(config.device, memory_format=torch.channels_last if last else torch.preserve_format)
    obj = obj.to(config.device)
    if config.channels_last:
        for t in (*obj.parameters(), *obj.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return obj


def amp_dtype(config: TrainConfig) -> torch.dtype | None:
    """The autocast dtype of ``--amp``: float16 on CUDA (with a loss scaler), bfloat16 elsewhere."""
    if not config.amp:
        return None
    return torch.float16 if config.device.startswith("cuda") else torch.bfloat16


@dataclass
class Optimization:
    """A run's optimizer, its per-epoch learning-rate decay and (float16 only) its loss scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> Optimization:
    """AdamW over ``params``, decayed by ``lr_decay`` per epoch (a fixed factor, so that training 2
    epochs equals training 1 and resuming), with a scaler when AMP runs in float16."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(config) == torch.float16 else None
    return Optimization(optimizer, scheduler, scaler)


@dataclass
class Start:
    """What a run starts from: its data splits, the example batch it is planned on, and the model."""

    splits: datasets.Splits
    example: torch.Tensor
    labels: torch.Tensor
    model: nn.Module


def build_model(name: str, num_classes: int, size: int) -> nn.Module:
    """The model for ``size``×``size`` inputs: timm ViT-style models are built for that size with
    patches of size/4 (4×4 tokens, small enough to train on a CPU); convolutional models take any
    size as they are; a factory taking ``features`` (a regressor of a table: ``splitfx.models:mlp8``)
    gets ``size`` features."""
    refused: TypeError | None = None
    for extra in ({"img_size": size, "patch_size": max(1, size // 4)}, {"img_size": size}, {"features": size}, {}):
        try:
            return create_model(name, num_classes=num_classes, **extra)
        except TypeError as err:
            refused = err
    raise SplitFXError(f"cannot build {name!r} for {num_classes} classes ({first_line(refused)}): its factory "
                       "must take num_classes, the number of outputs (def factory(num_classes=10): ...)") from refused


def student_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model a run trains: ``config.model``, spiking over ``config.spiking`` time steps when set."""
    model = build_model(config.model, num_classes, config.input_size)
    return model if config.spiking is None else spiking(model, config.spiking)


def start(config: TrainConfig) -> Start:
    """Seed, load the data and build the model, the same way on every process."""
    torch.manual_seed(config.seed)
    splits = datasets.load(config.data, config.input_size, config.validation)
    model = student_model(config, splits.num_classes)
    example, labels = batch(splits.train, torch.arange(min(config.batch, len(splits.train))))
    return Start(splits, example, labels, model)
