"""Regression errors of a trained model in the target's own units: ``splitfx train --task regression``
trains on standardised targets (:mod:`.task_data`) and reports the root-mean-square and mean absolute
errors after undoing the standardisation (both scale with the target's standard deviation)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..runtime.split_module import SplitModule
from . import data as datasets


@dataclass(frozen=True)
class Errors:
    """RMSE and MAE in the target's units."""

    rmse: float
    mae: float

    def __str__(self) -> str:
        return f"RMSE {self.rmse:.4g}, MAE {self.mae:.4g}"


def prediction(out: torch.Tensor | tuple) -> torch.Tensor:
    """The predicted values of a model's output: the output itself, or the first of a recipe's
    (prediction, uncertainty) pair (``ffr``)."""
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def errors(sm: SplitModule, dataset, batch_size: int, device: str, target_std: float) -> Errors:
    """RMSE and MAE of ``sm`` (eval mode) on ``dataset``, whose targets are standardised with standard
    deviation ``target_std``."""
    sm.eval()
    squared = absolute = 0.0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for x, y in loader:
        y = y.to(device)
        diff = prediction(sm(x.to(device))).reshape(y.shape).double() - y.double()
        squared += float((diff * diff).sum())
        absolute += float(diff.abs().sum())
    n = len(dataset)
    return Errors(math.sqrt(squared / n) * target_std, absolute / n * target_std)


def with_errors(epoch, errors: Errors | None):
    """An epoch's record (``train.EpochResult``) with its regression ``errors`` (None: as it is)."""
    return epoch if errors is None else dataclasses.replace(epoch, rmse=errors.rmse, mae=errors.mae)


def test_errors(result) -> Errors:
    """``train.test_accuracy`` for a regression run (``train.TrainResult``): RMSE and MAE of its final
    model on the test set, in the target's units; the one place a run with a validation split reads
    its test set."""
    config = result.config
    splits = datasets.load(config.data, config.input_size)
    return errors(result.module, splits.test, config.batch, config.device, splits.target[1])
