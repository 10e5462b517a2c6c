"""The ``splitfx train`` checkpoint: one dict in one file, written atomically, resumed bit-exactly.

The keys are the fields of :class:`Checkpoint`, in this module alone; ``model`` is
``SplitModule.state_dict()`` (the user's keys under ``model.``, then ``heads.`` and ``repl.``).
Loading checks every field's type (and the recorded config's), so a damaged or foreign file is a
:class:`CheckpointError` naming what is wrong, never an error from deep inside a resumed run.
"""
from __future__ import annotations

import os
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..base.errors import CheckpointError, one_line
from ..base.files import atomic_path, reason
from ..passes.names import PREFIX, unprefix
from ..runtime.split_module import SplitModule
from .config import TrainConfig

WRITTEN = "use a checkpoint.pt written by splitfx train"


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
        """Write the checkpoint to ``path`` atomically; a failed write (a full disk) is a
        :class:`CheckpointError` naming the system's reason, and leaves ``path`` as it was."""
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:  # through a file: a full disk is an OSError
                torch.save({f.name: getattr(self, f.name) for f in fields(self)}, f)
        except OSError as err:
            raise CheckpointError(f"--out {os.path.dirname(path) or '.'}: cannot write {os.path.basename(path)}: "
                                  f"{reason(err)}; free space there or give another --out (the checkpoint "
                                  "written before, if any, is whole)") from err

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        """The checkpoint at ``path``; a missing, truncated or foreign file is a :class:`CheckpointError`."""
        if not os.path.isfile(path):
            what = "a folder" if os.path.isdir(path) else "no such file"
            raise CheckpointError(f"{path}: {what}; give the checkpoint.pt that splitfx train wrote in its run folder")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # plain data: no code runs
        except Exception as err:  # any bytes at all: each parser's own error (KeyError, struct.error, ...)
            raise CheckpointError(f"{path}: cannot be read as a checkpoint, the file is truncated or is not a "
                                  f"torch file ({type(err).__name__}); {WRITTEN}") from err
        names = {f.name for f in fields(cls)}
        if not isinstance(state, dict) or not names <= state.keys():
            found = list(state)[:5] if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path}: not a splitfx train checkpoint (it holds {found}, not the keys "
                                  f"{sorted(names)[:4]}...); {WRITTEN}")
        state = {k: state[k] for k in names}
        wrong = _wrong_fields(state)
        if wrong:
            raise CheckpointError(f"{path}: a damaged splitfx checkpoint, these fields are malformed: "
                                  f"{'; '.join(wrong[:4])}; {WRITTEN}")
        return cls(**state)

    def check_model(self, model: nn.Module, where: str) -> None:
        """Refuse ``model`` (the user's model as the run builds it) unless its state dict has the
        checkpoint's keys and shapes: cheap, so a changed model definition is refused before any work."""
        saved, now = self.model_weights(), model.state_dict()
        differ = [f"{k}: checkpoint {list(saved[k].shape)}, model {list(now[k].shape)}"
                  for k in saved.keys() & now.keys() if saved[k].shape != now[k].shape]
        differ += [f"{k} only in the checkpoint" for k in saved.keys() - now.keys()]
        differ += [f"{k} only in the model" for k in now.keys() - saved.keys()]
        if differ:
            raise CheckpointError(f"--resume {where}: the model's weights no longer fit the checkpoint's "
                                  f"({len(differ)} differ: {'; '.join(sorted(differ)[:3])}); its definition changed "
                                  "since the checkpoint was written: restore it, or start a new run without --resume")

    def restore(self, sm: SplitModule, opt: torch.optim.Optimizer, sched, scaler, where: str = "--resume") -> None:
        """Put the training state back exactly as it was saved (RNG included); a state that does not
        fit the converted model (its aux heads, its optimizer) is a :class:`CheckpointError`."""
        try:
            sm.load_state_dict(self.model)
            opt.load_state_dict(self.optimizer)
            sched.load_state_dict(self.scheduler)
            if scaler is not None and self.scaler is not None:
                scaler.load_state_dict(self.scaler)
            torch.set_rng_state(self.rng)
            if self.cuda_rng is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self.cuda_rng)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"{where}: the checkpoint's training state does not fit the converted model "
                                  f"({one_line(err)[:240]}); it was written by another splitfx version or for "
                                  "another model: start a new run without --resume") from err

    def model_weights(self) -> dict[str, torch.Tensor]:
        """The user's model's own state dict (aux heads and RepL coefficients dropped)."""
        return {unprefix(k): v for k, v in self.model.items() if k.startswith(PREFIX)}


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` (a field's annotation: a class, ``X | None``, or a
    ``list``, ``tuple[X, ...]`` or ``dict`` of them); an int passes as a float, a bool as neither."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin in (list, tuple):  # either one: a tuple saved by another writer may come back as a list
        return isinstance(value, (list, tuple)) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


def _spelled(hint: Any) -> str:
    """A type annotation as it is written: ``int``, ``dict[str, Any] | None``."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def malformed(data: dict, cls: type) -> list[str]:
    """What in ``data`` (the fields of dataclass ``cls``, by name) is missing, unknown or of the wrong type."""
    hints, required = typing.get_type_hints(cls), {f.name for f in fields(cls)
                                                   if f.default is MISSING and f.default_factory is MISSING}
    wrong = [f"{k}: missing" for k in sorted(required - data.keys())]
    wrong += [f"{k}: unknown" for k in data if k not in hints]
    return wrong + [f"{k}: not {_spelled(hints[k])} (a {type(v).__name__})" for k, v in data.items()
                    if k in hints and not conforms(v, hints[k])]


def _wrong_fields(state: dict) -> list[str]:
    """What is malformed in a checkpoint's fields: their types, then their values and the recorded
    config's fields (the ones this splitfx knows; :func:`.config.check_resume` refuses the others)."""
    wrong = malformed(state, Checkpoint)
    if wrong:
        return wrong
    wrong = [f"{k}: {state[k]} < {low}" for k, low in (("epoch", 0), ("num_classes", 1), ("e2e_saved_bytes", 0))
             if state[k] < low]
    rngs = [state["rng"], *(state["cuda_rng"] or [])]
    if any(r.dtype != torch.uint8 or r.dim() != 1 for r in rngs) or len(state["rng"]) != len(torch.get_rng_state()):
        wrong.append("rng: not the state of a torch generator")
    known = {f.name for f in fields(TrainConfig)}
    config = {k: v for k, v in state["config"].items() if k in known}
    return wrong + [f"config.{w}" for w in malformed(config, TrainConfig)]
