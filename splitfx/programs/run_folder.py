"""The run folder ``splitfx train`` leaves: ``checkpoint.pt`` (every epoch), ``metrics.jsonl`` (one
JSON line per epoch, and the same scalars under ``tensorboard/`` when the ``tensorboard`` extra is
installed), ``plan.png`` (the split) and ``model.onnx`` (the trained model, verified with
onnxruntime). Without ``--out`` it is ``runs/<model>-<recipe>-k<K>``, numbered so that no earlier
run is overwritten."""
from __future__ import annotations

import importlib.util
import json
import numbers
import os
import re
from collections.abc import Callable, Sequence

import torch

from ..api.onnx_export import export_onnx
from ..base.files import write_text
from ..runtime.split_module import SplitModule
from .config import TrainConfig

CHECKPOINT, METRICS, PLOT, ONNX, TENSORBOARD = "checkpoint.pt", "metrics.jsonl", "plan.png", "model.onnx", "tensorboard"


def default_dir(config: TrainConfig, root: str = "runs") -> str:
    """``runs/resnet18-linear-k4``, or ``…-2``, ``…-3`` when that folder is already there."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.model}-{config.recipe}-k{config.blocks}").strip("._")
    path, n = os.path.join(root, name), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(root, f"{name}-{n}")
    return path


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
