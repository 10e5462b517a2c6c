"""``splitfx train``: local training of a converted model, with checkpoints that resume bit-exactly.

Determinism: the data order of epoch e comes from a generator seeded with (seed, e), the global
RNG state is saved with every checkpoint, and the learning rate decays by a fixed factor per epoch
(a schedule over ``--epochs``, such as cosine, would make a 1-epoch run differ from the first epoch
of a 2-epoch one), so training 2 epochs equals training 1, resuming, and training 1 more (on CPU,
where kernels are deterministic).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..api.conversion import convert
from ..base.errors import SplitFXError
from ..base.files import write_text
from ..base.meter import SavedTensorMeter, state_keys
from ..runtime.split_module import SplitModule
from . import data as datasets
from .checkpoint import Checkpoint
from .models import create_model

CHECKPOINT = "checkpoint.pt"  # in the --out folder


@dataclass
class TrainConfig:
    model: str = "resnet18"
    blocks: int = 4
    recipe: str = "infopro"
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


@dataclass
class EpochResult:
    epoch: int
    train_loss: float  # mean loss of the last block (the model's own loss)
    block_losses: list[float]
    test_accuracy: float
    seconds: float
    peak_saved_bytes: int  # measured, live saved-for-backward activations
    peak_cuda_bytes: int | None = None


@dataclass
class TrainResult:
    config: TrainConfig
    trained_blocks: int
    e2e_saved_bytes: int  # predicted by the plan for one E2E step at this batch size
    history: list[EpochResult] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.history[-1].test_accuracy if self.history else float("nan")


def build_model(name: str, num_classes: int, size: int) -> nn.Module:
    """The model for ``size``×``size`` inputs: timm ViT-style models are built for that size with
    patches of size/4 (4×4 tokens, small enough to train on a CPU); convolutional models take any
    size as they are."""
    for extra in ({"img_size": size, "patch_size": max(1, size // 4)}, {"img_size": size}, {}):
        try:
            return create_model(name, num_classes=num_classes, **extra)
        except TypeError:
            continue
    raise SplitFXError(f"cannot build {name!r} for {num_classes} classes")


def _amp_dtype(config: TrainConfig) -> torch.dtype | None:
    if not config.amp:
        return None
    return torch.float16 if config.device.startswith("cuda") else torch.bfloat16


@torch.no_grad()
def evaluate(sm: SplitModule, dataset, batch: int, device: str) -> float:
    sm.eval()
    correct = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch)
    for x, y in loader:
        correct += (sm(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return correct / len(dataset)


def train(
    config: TrainConfig,
    out: str | None = None,
    resume: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainResult:
    """Train ``config.model`` with ``config.recipe``; checkpoint to ``out/checkpoint.pt`` each epoch."""
    state = None
    if resume is not None:
        if not os.path.isfile(resume):
            raise SplitFXError(f"--resume {resume}: no such checkpoint")
        state = Checkpoint.load(resume)
        config = TrainConfig(**{**state.config, "epochs": config.epochs, "device": config.device})
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SplitFXError("--device cuda: no CUDA device is visible to torch")
    torch.manual_seed(config.seed)
    train_set, test_set, num_classes = datasets.load(config.data, config.input_size)
    model = build_model(config.model, num_classes, config.input_size)
    example = torch.stack([train_set[i][0] for i in range(config.batch)])
    sm = convert(model, example, config.blocks, recipe=config.recipe).to(config.device)
    opt = torch.optim.AdamW(sm.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    amp = _amp_dtype(config)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    result = TrainResult(config, sm.num_blocks, sm.plan.e2e_saved_bytes)
    start_epoch = 0
    if state is not None:
        state.restore(sm, opt, sched, scaler)
        result.history = [EpochResult(**h) for h in state.history]
        start_epoch = state.epoch + 1

    log(f"{config.model}: {sm.num_blocks} gradient-isolated blocks, recipe {config.recipe!r}, "
        f"{len(train_set)} train / {len(test_set)} test images of {config.input_size}², on {config.device}")
    exclude = state_keys([sm])
    for epoch in range(start_epoch, config.epochs):
        sm.train()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        batches = [order[i:i + config.batch] for i in range(0, len(order), config.batch)]
        sums = torch.zeros(sm.num_blocks)
        if config.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=None if progress else True, leave=False)
        with SavedTensorMeter(exclude) as meter:
            for idx in bar:
                x, y = (t.to(config.device) for t in _batch(train_set, idx))
                losses = sm.train_step(x, y, opt, scaler, amp)
                sums += torch.tensor(losses)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        sched.step()
        accuracy = evaluate(sm, test_set, config.batch, config.device)
        block_losses = (sums / len(batches)).tolist()
        result.history.append(EpochResult(
            epoch + 1, block_losses[-1], block_losses, accuracy, time.perf_counter() - began, meter.peak,
            torch.cuda.max_memory_allocated() if config.device.startswith("cuda") else None,
        ))
        log(f"epoch {epoch + 1}/{config.epochs}: train loss {block_losses[-1]:.4f}, test accuracy "
            f"{100 * accuracy:.2f} %, {result.history[-1].seconds:.1f} s")
        if out is not None:
            Checkpoint.capture(
                sm, opt, sched, scaler, config=asdict(config), epoch=epoch, history=[asdict(h) for h in result.history],
                e2e_saved_bytes=result.e2e_saved_bytes, num_classes=num_classes,
            ).save(os.path.join(out, CHECKPOINT))
    if result.history:
        peak = max(h.peak_saved_bytes for h in result.history)
        log(f"peak saved activations: {peak / 2**20:.1f} MiB local (measured) vs "
            f"{result.e2e_saved_bytes / 2**20:.1f} MiB E2E (the plan's prediction for fp32, exact on CPU), "
            f"{peak / max(result.e2e_saved_bytes, 1):.2f}×")
    if out is not None:
        write_text(os.path.join(out, "metrics.json"), json.dumps(
            {"config": asdict(config), "history": [asdict(h) for h in result.history],
             "e2e_saved_bytes": result.e2e_saved_bytes}, indent=2))
    return result


def load_checkpoint_model(path: str) -> tuple[nn.Module, TrainConfig]:
    """The user's model with the trained weights of a ``splitfx train`` checkpoint (heads dropped)."""
    state = Checkpoint.load(path)
    config = TrainConfig(**state.config)
    model = build_model(config.model, state.num_classes, config.input_size)
    model.load_state_dict(state.model_weights(), strict=True)
    return model.eval(), config


def _batch(dataset, idx: torch.Tensor):
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return tuple(t[idx] for t in dataset.tensors)
    items = [dataset[i] for i in idx.tolist()]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
