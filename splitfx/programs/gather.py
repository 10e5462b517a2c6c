"""One checkpoint format for any number of ranks: the single-process ``checkpoint.pt``.

Saving, the first replica of every stage sends its tensors (model, aux heads, RepL coefficients) and
its optimizer's per-parameter state, keyed by name, to rank 0, which writes exactly the file one
process would have written: ``SplitModule.state_dict()`` and the state dict of one AdamW over
``sm.parameters()``. Resuming on S ranks, every rank reads that file, loads the whole model before
dropping what it does not hold, and takes its own parameters' optimizer state by name. So a run on S
ranks resumes on one process or on another S, exactly.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..base.errors import CheckpointError, DistributedError
from ..runtime.grid import Grid
from ..runtime.pipeline import Stage
from ..runtime.split_module import SplitModule
from ..runtime.transport import reason
from .checkpoint import Checkpoint


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def _share(sm: SplitModule, stage: Stage, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's real tensors and its optimizer state by parameter name."""
    names = [n for n, _ in stage.named_parameters()]
    saved = opt.state_dict()
    return {
        "model": {k: _cpu(v) for k, v in sm.state_dict().items() if v.device.type != "meta"},
        "state": {names[i]: {k: _cpu(v) for k, v in s.items()} for i, s in saved["state"].items()},
        "group": {k: v for k, v in saved["param_groups"][0].items() if k != "params"},
    }


def gather_checkpoint(grid: Grid, sm: SplitModule, stage: Stage, opt: torch.optim.Optimizer, sched, scaler,
                      **rest: Any) -> Checkpoint | None:
    """On rank 0, the checkpoint one process training the same model would hold now; None elsewhere.
    Every rank must call it."""
    share = _share(sm, stage, opt) if grid.replica == 0 else None
    shares: list[Any] = [None] * grid.world if grid.rank == 0 else None
    try:
        dist.gather_object(share, shares, dst=0)
    except RuntimeError as err:
        raise DistributedError(f"rank {grid.rank}: a rank stopped while the checkpoint was gathered: "
                               f"{reason(err, grid.timeout)}") from err
    if grid.rank != 0:
        return None
    parts = [s for s in shares if s is not None]
    model = {k: v for part in parts for k, v in part["model"].items()}
    keys = list(sm.state_dict())
    missing = [k for k in keys if k not in model]
    if missing:
        raise DistributedError(f"no rank holds {', '.join(missing[:3])}: the stages do not cover the model")
    by_name = {n: s for part in parts for n, s in part["state"].items()}
    names = [n for n, _ in sm.named_parameters()]
    optimizer = {"state": {i: by_name[n] for i, n in enumerate(names) if n in by_name},
                 "param_groups": [{**parts[0]["group"], "params": list(range(len(names)))}]}
    return Checkpoint(
        model={k: model[k] for k in keys}, optimizer=optimizer, scheduler=sched.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else None, rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, **rest,
    )


def stage_optimizer_state(saved: dict[str, Any], sm: SplitModule, stage: Stage) -> dict[str, Any]:
    """The state dict of this stage's optimizer, taken by name from a one-process checkpoint's."""
    if len(saved.get("param_groups", ())) != 1:
        raise CheckpointError("the checkpoint's optimizer has several parameter groups; splitfx train writes one")
    index = {n: i for i, (n, _) in enumerate(sm.named_parameters())}
    mine = [n for n, _ in stage.named_parameters()]
    group = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    return {"state": {j: saved["state"][index[n]] for j, n in enumerate(mine) if index[n] in saved["state"]},
            "param_groups": [{**group, "params": list(range(len(mine)))}]}
