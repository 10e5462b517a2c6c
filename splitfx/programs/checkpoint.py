"""The ``splitfx train`` checkpoint: one dict in one file, written atomically, resumed bit-exactly.

The keys are the fields of :class:`Checkpoint`, in this module alone; ``model`` is
``SplitModule.state_dict()`` (the user's keys under ``model.``, then ``heads.`` and ``repl.``).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..base.errors import CheckpointError
from ..base.files import atomic_path
from ..passes.names import PREFIX, unprefix
from ..runtime.split_module import SplitModule


@dataclass
class Checkpoint:
    config: dict[str, Any]  # TrainConfig as a dict, every recipe option included (resume is exact)
    epoch: int  # the last finished epoch (0-based)
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    history: list[dict[str, Any]]  # EpochResult dicts
    e2e_saved_bytes: int
    num_classes: int

    @classmethod
    def capture(cls, sm: SplitModule, opt: torch.optim.Optimizer, sched, scaler, **rest: Any) -> Checkpoint:
        """The training state now: modules, optimizer, schedule, scaler and RNG, plus ``rest``."""
        return cls(
            model=sm.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None, rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, **rest,
        )

    def save(self, path: str) -> None:
        with atomic_path(path) as tmp:
            torch.save({f.name: getattr(self, f.name) for f in fields(self)}, tmp)

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        """The checkpoint at ``path``; a missing, truncated or foreign file is a :class:`CheckpointError`."""
        if not os.path.isfile(path):
            what = "a folder" if os.path.isdir(path) else "no such file"
            raise CheckpointError(f"{path}: {what}; give the checkpoint.pt that splitfx train wrote in its run folder")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # plain data: no code runs
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise CheckpointError(f"{path}: cannot be read as a checkpoint, the file is truncated or is not a "
                                  f"torch file ({type(err).__name__}); use a checkpoint.pt written by splitfx "
                                  "train") from err
        names = {f.name for f in fields(cls)}
        if not isinstance(state, dict) or not names <= state.keys():
            found = list(state)[:5] if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path}: not a splitfx train checkpoint (it holds {found}, not the keys "
                                  f"{sorted(names)[:4]}...); use a checkpoint.pt written by splitfx train")
        return cls(**{k: state[k] for k in names})

    def restore(self, sm: SplitModule, opt: torch.optim.Optimizer, sched, scaler) -> None:
        """Put the training state back exactly as it was saved (RNG included)."""
        sm.load_state_dict(self.model)
        opt.load_state_dict(self.optimizer)
        sched.load_state_dict(self.scheduler)
        if scaler is not None and self.scaler is not None:
            scaler.load_state_dict(self.scaler)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda_rng)

    def model_weights(self) -> dict[str, torch.Tensor]:
        """The user's model's own state dict (aux heads and RepL coefficients dropped)."""
        return {unprefix(k): v for k, v in self.model.items() if k.startswith(PREFIX)}
