"""``splitfx train``: local training of a converted model, with checkpoints that resume bit-exactly.

Determinism: the data order of epoch e comes from a generator seeded with (seed, e), the global
RNG state is saved with every checkpoint, and the learning rate decays by a fixed factor per epoch
(a schedule over ``--epochs``, such as cosine, would make a 1-epoch run differ from the first epoch
of a 2-epoch one), so training 2 epochs equals training 1, resuming, and training 1 more (on CPU,
where kernels are deterministic).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

import timm
import torch
from torch import nn
from tqdm.auto import tqdm

from ..api.conversion import convert
from ..api.staging import plan_at
from ..base.errors import CheckpointError, SplitFXError, first_line
from ..base.live_bytes import LiveBytes
from ..base.meter import SavedTensorMeter, state_keys
from ..recipes import Recipe
from ..runtime.split_module import SplitModule
from . import data as datasets
from . import regression
from .checkpoint import Checkpoint, malformed
from .config import TrainConfig, check_resume, resolve_device, with_cuts_of
from .epochs import amp_dtype, batch, build_model, epoch_order, make_optimizer, on_device, start, student_model
from .measure import e2e_saved_bytes
from .regression import Errors
from .run_folder import CHECKPOINT, write_metrics


@dataclass
class EpochResult:
    epoch: int
    train_loss: float  # mean loss of the last block (the model's own loss)
    block_losses: list[float]
    test_accuracy: float | None  # None when the run has a validation split: it never reads test images
    seconds: float
    peak_saved_bytes: int  # measured, live saved-for-backward activations
    peak_cuda_bytes: int | None = None
    val_accuracy: float | None = None  # with a validation split (``TrainConfig.validation``)
    # Regression (no accuracy): the errors on what was evaluated (val or test), in the target's units.
    rmse: float | None = None
    mae: float | None = None
    # Measured on one step of the first epoch: every tensor alive at the step's peak (parameters,
    # gradients, optimizer state, activations, transients; LiveBytes). None on later epochs.
    step_peak_bytes: int | None = None

    @property
    def accuracy(self) -> float:
        """The accuracy evaluated after this epoch: validation when the run has a split, else test."""
        return self.val_accuracy if self.val_accuracy is not None else self.test_accuracy

    def scored(self) -> str:
        """What the epoch was judged by: its accuracy, or its regression errors."""
        if self.rmse is None:
            return f"accuracy {100 * self.accuracy:.2f} %"
        return f"RMSE {self.rmse:.4g}, MAE {self.mae:.4g}"


def epoch_result(epoch: int, block_losses: list[float], monitor: str, accuracy: float, seconds: float,
                 peak_saved_bytes: int, peak_cuda_bytes: int | None = None,
                 step_peak: int | None = None) -> EpochResult:
    """One epoch's record, ``accuracy`` filed under what it was measured on (``val`` or ``test``)."""
    return EpochResult(epoch, block_losses[-1], block_losses, accuracy if monitor == "test" else None, seconds,
                       peak_saved_bytes, peak_cuda_bytes, accuracy if monitor == "val" else None,
                       step_peak_bytes=step_peak)


@dataclass
class TrainResult:
    config: TrainConfig
    trained_blocks: int
    e2e_saved_bytes: int  # measured: one E2E step of the unsplit model, same meter, same batch
    history: list[EpochResult] = field(default_factory=list)
    e2e_predicted_bytes: int = 0  # the plan's prediction of the same
    module: SplitModule | None = field(default=None, repr=False, compare=False)  # the trained model
    example: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def monitored(self) -> str:
        """What was evaluated after every epoch: ``val`` (a validation split) or ``test``."""
        return "val" if self.config.validation else "test"

    @property
    def final_accuracy(self) -> float:
        return self.history[-1].accuracy if self.history else float("nan")

    @property
    def peak_saved_bytes(self) -> int:
        return max((h.peak_saved_bytes for h in self.history), default=0)

    def summary(self) -> str:
        local, e2e = self.peak_saved_bytes, self.e2e_saved_bytes
        return (f"peak saved activations, measured with the same meter on the same batch: local "
                f"{local / 2**20:.1f} MiB (K={self.trained_blocks}, {self.config.recipe}) vs E2E "
                f"{e2e / 2**20:.1f} MiB: {local / max(e2e, 1):.2f}× "
                f"({'less' if local < e2e else 'MORE' if local > e2e else 'the same'} memory); {self.monitored} "
                f"{self._final()}")

    def _final(self) -> str:
        last = self.history[-1]
        if last.rmse is not None:
            return f"{last.scored()} (best RMSE {min(h.rmse for h in self.history):.4g})"
        return f"{last.scored()} (best {100 * max(h.accuracy for h in self.history):.2f} %)"


def run_recipe(config: TrainConfig, num_classes: int) -> Recipe:
    """The recipe ``config`` trains with, its ``--teacher`` loaded (once: every plan of the run shares it)."""
    return config.make_recipe(load_teacher(config.teacher, config, num_classes) if config.teacher else None)


def convert_for(config: TrainConfig, model: nn.Module, example: torch.Tensor, recipe: Recipe, **kwargs) -> SplitModule:
    """``model`` converted as ``config`` says with ``recipe`` (:func:`run_recipe`; blocks, cut width,
    balance, RepL, the cuts a pipeline placed): the one place single-process and distributed training turn a config
    into a plan, so both split a model the same way."""
    options = dict(recipe=recipe, max_cut_tensors=config.max_cut_tensors, method=config.method,
                   replace=config.replace, **kwargs)
    if config.cuts is None:
        return convert(model, example, config.blocks, **options)
    return convert(model, example, plan=plan_at(model, (example,), config.blocks, options, config.cuts))


@torch.no_grad()
def evaluate(sm: SplitModule, dataset, batch_size: int, device: str) -> float:
    """Top-1 accuracy of ``sm`` (the whole model, eval mode) on ``dataset``."""
    sm.eval()
    correct = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for x, y in loader:
        correct += (sm(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return correct / len(dataset)


def record_epoch(result: TrainResult, log: Callable[[str], None], epoch: EpochResult) -> None:
    """Add ``epoch`` to the run's history and log its line."""
    result.history.append(epoch)
    log(f"epoch {epoch.epoch}/{result.config.epochs}: train loss {epoch.train_loss:.4f}, {result.monitored} "
        f"{epoch.scored()}, {epoch.seconds:.1f} s")


def score(sm: SplitModule, dataset, config: TrainConfig, target: tuple[float, float] | None
          ) -> tuple[float | None, Errors | None]:
    """What a run is judged by on ``dataset``: top-1 accuracy, or for regression data (``target``: the
    target's mean and standard deviation) RMSE and MAE in the target's units."""
    if target is None:
        return evaluate(sm, dataset, config.batch, config.device), None
    return None, regression.errors(sm, dataset, config.batch, config.device, target[1])


def open_resume(resume: str | Checkpoint, config: TrainConfig, where: str = "the checkpoint") -> Checkpoint:
    """The checkpoint to resume, refused when ``config`` trains something else or has nothing left to do."""
    state = resume if isinstance(resume, Checkpoint) else Checkpoint.load(resume)
    where = resume if isinstance(resume, str) else where
    check_resume(config, state.config, where)
    if config.epochs <= state.epoch + 1:
        raise SplitFXError(f"--resume {where}: {state.epoch + 1} epoch(s) are already trained and --epochs is "
                           f"the total ({config.epochs}); give --epochs {state.epoch + 2} or more")
    check_fits(state, config, where)
    return state


def check_fits(state: Checkpoint, config: TrainConfig, where: str) -> None:
    """Refuse, before data is loaded or a model converted, a checkpoint that does not fit ``config``:
    other classes than its data's, weights of another shape than its model's (its definition changed),
    a history or optimizer state that no run wrote."""
    classes = datasets.num_classes(config.data)
    if classes != state.num_classes:
        raise CheckpointError(f"--resume {where}: the checkpoint was trained on {state.num_classes} classes, --data "
                              f"{config.data} has {classes} now; resume on the data it was trained on, or start a "
                              "new run without --resume")
    state.check_model(student_model(config, classes), where)
    wrong = [f"history[{i}].{w}" for i, h in enumerate(state.history) for w in malformed(h, EpochResult)]
    if not {"state", "param_groups"} <= state.optimizer.keys():
        wrong.append("optimizer: not an optimizer's state")
    if wrong:
        raise CheckpointError(f"--resume {where}: a damaged splitfx checkpoint, these fields are malformed: "
                              f"{'; '.join(wrong[:4])}; resume another checkpoint or start a new run without --resume")


def train(
    config: TrainConfig,
    out: str | None = None,
    resume: str | Checkpoint | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainResult:
    """Train ``config.model`` with ``config.recipe``; checkpoint to ``out/checkpoint.pt`` and the epochs
    so far to ``out/metrics.jsonl`` after each epoch. ``resume`` must have been trained with the same
    config (``epochs``, ``device`` and ``amp`` may differ). With ``config.validation`` the epochs are
    evaluated on the validation split and the test images are never read (:func:`test_accuracy`
    reads them once, when the caller has chosen what to report)."""
    state = open_resume(resume, config) if resume is not None else None
    config = replace(with_cuts_of(config, state.config) if state else config, device=resolve_device(config.device))
    begin = start(config)
    train_set, num_classes = begin.splits.train, begin.splits.num_classes
    monitor, monitored = begin.splits.monitored
    sm = on_device(config, convert_for(config, begin.model, begin.example, run_recipe(config, num_classes)))
    if begin.splits.target is not None and sm.recipe.traits.infers:  # ffr: its heads' target range
        sm.recipe.fit_targets(sm.heads, batch(train_set, torch.arange(len(train_set)))[1].to(config.device))
    run = make_optimizer(config, list(sm.parameters()))
    opt, sched, scaler, amp = run.optimizer, run.scheduler, run.scaler, amp_dtype(config)
    e2e = e2e_saved_bytes(sm.model, on_device(config, begin.example), begin.labels, sm.loss_fn, amp)
    result = TrainResult(config, sm.num_blocks, e2e, [], sm.plan.e2e_saved_bytes, sm, begin.example)
    start_epoch = 0
    if state is not None:
        state.restore(sm, opt, sched, scaler, f"--resume {resume}" if isinstance(resume, str) else "--resume")
        result.history = [EpochResult(**h) for h in state.history]
        start_epoch = state.epoch + 1

    what = f"samples of {config.input_size} features" if begin.splits.target else f"images of {config.input_size}²"
    blocks = "gradient-isolated blocks" if config.detach else "blocks, not detached (deep supervision)"
    log(f"{config.model}: {sm.num_blocks} {blocks}, recipe {config.recipe!r}, "
        f"{len(train_set)} train / {len(monitored)} {monitor} {what}, on {config.device}")
    exclude = state_keys([sm])
    for epoch in range(start_epoch, config.epochs):
        sm.train()
        batches = epoch_order(config, epoch, len(train_set))
        sums = torch.zeros(sm.num_blocks if config.detach else 1)  # --no-detach: one summed loss
        if config.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=None if progress else True, leave=False)
        step_peak = None
        with SavedTensorMeter(exclude) as meter:
            for i, idx in enumerate(bar):
                x, y = (on_device(config, t) for t in batch(train_set, idx))
                # The whole step's bytes, once, on a warm step (the optimizer's state exists): saved
                # activations are what local learning shrinks, this is what the device must hold.
                counted = epoch == 0 and i == min(1, len(batches) - 1)
                with LiveBytes(sm, opt, x, y) if counted else nullcontext() as live:
                    losses = sm.train_step(x, y, opt, scaler, amp, detach=config.detach)
                step_peak = live.peak if counted else step_peak
                sums += torch.tensor(losses)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        sched.step()
        accuracy, errors = score(sm, monitored, config, begin.splits.target)
        block_losses = (sums / len(batches)).tolist()
        record_epoch(result, log, regression.with_errors(epoch_result(
            epoch + 1, block_losses, monitor, accuracy, time.perf_counter() - began, meter.peak,
            torch.cuda.max_memory_allocated() if config.device.startswith("cuda") else None, step_peak=step_peak,
        ), errors))
        if out is not None:
            _save(result, sm, opt, sched, scaler, out, num_classes)
    log(result.summary())
    return result


def test_accuracy(result: TrainResult) -> float:
    """The test accuracy of a trained run's final model: the one place a run with a validation split
    reads its test images, called once what to report has been chosen."""
    config = result.config
    return evaluate(result.module, datasets.load(config.data, config.input_size).test, config.batch, config.device)


def _save(result: TrainResult, sm: SplitModule, opt, sched, scaler, out: str, num_classes: int) -> None:
    history = [asdict(h) for h in result.history]
    Checkpoint.capture(
        sm, opt, sched, scaler, config=asdict(result.config), epoch=result.history[-1].epoch - 1, history=history,
        e2e_saved_bytes=result.e2e_saved_bytes, num_classes=num_classes,
    ).save(os.path.join(out, CHECKPOINT))
    extra = {"blocks": result.trained_blocks, "recipe": result.config.recipe, "e2e_saved_bytes": result.e2e_saved_bytes,
             "e2e_predicted_bytes": result.e2e_predicted_bytes}
    write_metrics(out, [{**h, **extra} for h in history])


def load_checkpoint_model(path: str) -> tuple[nn.Module, TrainConfig]:
    """The user's model with the trained weights of a ``splitfx train`` checkpoint (heads dropped)."""
    state = Checkpoint.load(path)
    config = TrainConfig(**{k: v for k, v in state.config.items() if k in TrainConfig.__dataclass_fields__})
    model = student_model(config, state.num_classes)
    try:
        model.load_state_dict(state.model_weights(), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit {config.model!r} ({first_line(err, 160)})") from err
    return model.eval(), config


def load_teacher(path: str, config: TrainConfig, num_classes: int) -> nn.Module:
    """The teacher ``--teacher`` names: a ``splitfx train`` checkpoint's model, or ``config.model``
    built as a run builds it (not spiking) with a timm checkpoint's weights (``load_checkpoint``)."""
    try:
        return load_checkpoint_model(path)[0]
    except CheckpointError as err:
        if "not a splitfx train checkpoint" not in str(err):
            raise
    try:
        teacher = build_model(config.model, num_classes, config.input_size)
        timm.models.load_checkpoint(teacher, path)
        return teacher.eval()
    except (RuntimeError, KeyError, OSError) as err:
        raise CheckpointError(f"--teacher {path}: neither a splitfx checkpoint nor a timm checkpoint of "
                              f"{config.model!r} ({first_line(err, 160)})") from err
