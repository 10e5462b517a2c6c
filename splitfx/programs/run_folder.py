"""The run folder ``splitfx train`` leaves: ``checkpoint.pt`` (every epoch), ``metrics.jsonl`` (one
JSON line per epoch, and the same scalars under ``tensorboard/`` when the ``tensorboard`` extra is
installed), ``plan.png`` (the split) and ``model.onnx`` (the trained model, verified with
onnxruntime). Without ``--out`` it is ``runs/<model>-<recipe>-k<K>``, numbered so that no earlier
run is overwritten."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import numbers
import os
from collections.abc import Callable, Iterator, Sequence

import torch

from ..api.onnx_export import export_onnx
from ..base.errors import SplitFXError
from ..base.files import file_stem, running, write_text
from ..runtime.split_module import SplitModule
from .config import TrainConfig

CHECKPOINT, METRICS, PLOT, ONNX, TENSORBOARD = "checkpoint.pt", "metrics.jsonl", "plan.png", "model.onnx", "tensorboard"
LOCK = ".lock"  # holds the id of the process training into the folder
RUNS = "runs"  # where run folders go by default


def default_dir(config: TrainConfig, root: str = RUNS) -> str:
    """``runs/resnet18-linear-k4``, or ``…-2``, ``…-3`` when that folder is already there: created
    here, exclusively, so that two runs started at once never get the same folder."""
    name = file_stem(f"{config.model}-{config.recipe}-k{config.blocks}")
    os.makedirs(root, exist_ok=True)
    path, n = os.path.join(root, name), 1
    while True:
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1
            path = os.path.join(root, f"{name}-{n}")


@contextlib.contextmanager
def reserved(out: str | None, config: TrainConfig, resume: str | None = None, overwrite: bool = False
             ) -> Iterator[str]:
    """Hold the run folder for this process while the run writes to it: ``out``, or with None the next
    free :func:`default_dir`. A lock file naming the process is created exclusively and removed at
    the end. Refused: a folder another live process holds, and one holding another run's checkpoint
    unless it is the checkpoint ``resume`` continues or ``overwrite`` replaces it. A folder made here and left empty
    (the run failed before its first epoch) is removed."""
    made = [out] if out is not None and not os.path.isdir(out) else []
    if out is None:  # the default folder, and ``runs`` where it is the first
        first = not os.path.isdir(RUNS)
        out = default_dir(config)
        made = [out, RUNS] if first else [out]
    os.makedirs(out, exist_ok=True)
    held = os.path.join(out, CHECKPOINT)
    if os.path.exists(held) and not overwrite and not (resume is not None and os.path.samefile(held, resume)):
        raise SplitFXError(f"--out {out} holds another run's checkpoint; continue it with --resume "
                           f"{os.path.join(out, CHECKPOINT)}, replace it with --overwrite, or choose another --out")
    lock = _lock(out)
    try:
        yield out
    finally:  # tidying up never hides what stopped the run
        with contextlib.suppress(OSError):
            os.remove(lock)
            for folder in made:
                if not os.listdir(folder):
                    os.rmdir(folder)


def _lock(out: str) -> str:
    """Create ``out/.lock`` holding this process's id; a lock whose process is gone is taken over."""
    path = os.path.join(out, LOCK)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and running(holder):
                raise SplitFXError(f"{out} is the run folder of another splitfx train (process {holder}) that is "
                                   "still running; wait for it, or choose another --out") from None
            os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return path
    raise SplitFXError(f"{out}: cannot take its lock file {LOCK}; another run keeps replacing it")


def _holder(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or -1)
    except (OSError, ValueError):
        return None


def write_metrics(out: str, lines: Sequence[dict]) -> None:
    """All epochs so far, one JSON object per line (rewritten whole, atomically, after each epoch);
    the newest epoch's numbers also go to TensorBoard where it is installed."""
    write_text(os.path.join(out, METRICS), "".join(json.dumps(line) + "\n" for line in lines))
    if lines and importlib.util.find_spec("tensorboard") is not None:
        _tensorboard(out, lines[-1])


def _tensorboard(out: str, line: dict) -> None:
    """The epoch's scalars (losses per block, accuracies, memory, seconds) at step ``epoch``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(os.path.join(out, TENSORBOARD)) as writer:
        for key, value in line.items():
            if key == "block_losses":
                for k, loss in enumerate(value):
                    writer.add_scalar(f"block_loss/{k}", loss, line["epoch"])
            elif isinstance(value, numbers.Real) and not isinstance(value, bool) and key != "epoch":
                writer.add_scalar(key, value, line["epoch"])


def read_metrics(out: str) -> list[dict]:
    with open(os.path.join(out, METRICS)) as f:
        return [json.loads(line) for line in f if line.strip()]


def finish(sm: SplitModule, example: torch.Tensor, out: str, log: Callable[[str], None] = print) -> None:
    """Add the plan picture and the verified ONNX export of the trained model to the run folder."""
    sm.plan.plot(os.path.join(out, PLOT))
    report = export_onnx(sm, os.path.join(out, ONNX), example[:2].cpu())
    log(f"run folder {out}{os.sep}: {CHECKPOINT} (resume with --resume), {METRICS}, {PLOT}, {ONNX} "
        f"(onnxruntime max abs diff {report.max_abs_diff:.1e})")
