"""Pipeline stages placed first, at equal measured time, then blocks balanced within each stage
(``convert(..., stages=S, stage_balance="time")``)."""
import pytest
import torch
from torch import nn

import splitfx
from splitfx.api import staging
from splitfx.api.planning import _defaults, _planner


def _chain(depth: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(16, 16), nn.ReLU())], nn.Linear(16, 4))


def test_the_stage_boundary_is_where_the_measured_time_is_halved_and_each_stage_gets_its_blocks(monkeypatch):
    x = torch.randn(8, 16)
    seconds = [1.0] * 8 + [2.0] * 4  # 12 finer blocks (6 per stage): 8 s before block 8, 8 s from it on

    def timed(sm, *_, **__):
        assert sm.num_blocks == len(seconds), "the finer split has FINE_PER_STAGE blocks per stage"
        return seconds

    monkeypatch.setattr(staging, "measure_block_times", timed)
    monkeypatch.setattr(staging, "FINE_PER_STAGE", 6)
    model = _chain()
    grain = _planner(model, (x,), **_defaults({})).plan(12)
    cut = grain.plan.blocks[7].end
    sm = splitfx.convert(model, x, 4, stages=2, stage_balance="time", num_classes=4)
    ends = [b.end for b in sm.plan.blocks[:-1]]
    assert cut in ends, (cut, ends)
    assert sum(e <= cut for e in ends) == 2, "two blocks in each stage, balanced within it"


def test_recorded_cuts_give_the_same_blocks_and_foreign_ones_are_refused():
    from splitfx.api.staging import cut_positions, plan_at

    x = torch.randn(8, 16)
    model = _chain()
    first = splitfx.plan(model, x, 4, num_classes=4)
    again = plan_at(model, (x,), 4, dict(num_classes=4), cut_positions(first))
    assert [(b.start, b.end) for b in again.blocks] == [(b.start, b.end) for b in first.blocks]
    with pytest.raises(splitfx.PlanError, match="not cuts of this model's plan"):
        plan_at(model, (x,), 4, dict(num_classes=4), (1, 2, 10_000))
    with pytest.raises(splitfx.ArgumentError, match="make 3 blocks, not 4"):
        plan_at(model, (x,), 4, dict(num_classes=4), (1, 2))
    with pytest.raises(splitfx.ArgumentError, match="repeat a position"):
        plan_at(model, (x,), 4, dict(num_classes=4), (*cut_positions(first)[:2], cut_positions(first)[1]))
