"""Pipeline schedules chosen by name: the streaming order equals ``train_step`` bit for bit, and
micro-batches give the same gradients for losses that are means over the batch (no BatchNorm)."""
import pytest
import torch
from dist_helpers import batches, converted, optimizer, scheduled

import splitfx
from splitfx.base.errors import ArgumentError
from splitfx.runtime.grid import Grid
from splitfx.runtime.pipeline import Stage
from splitfx.runtime.rank import Rank
from splitfx.runtime.schedules import SCHEDULES, MicroBatches, Streaming, schedule_named

from tinynets import MLP


def test_schedules_are_found_by_name_and_an_unknown_one_names_the_choices():
    assert {"stream", "microbatch"} <= set(SCHEDULES)
    assert isinstance(schedule_named("stream"), Streaming)
    assert schedule_named("microbatch", 4).microbatches == 4
    with pytest.raises(ArgumentError, match="microbatch, stream"):
        schedule_named("interleaved")


def test_streaming_equals_train_step_bit_for_bit():
    data = batches(3)
    sm = converted(3, "dgl")
    opt = optimizer(sm.parameters())
    for x, y in data:
        sm.train_step(x, y, opt)
    ranked = scheduled(3, "dgl", data, Streaming())
    for (name, a), b in zip(sm.state_dict().items(), ranked.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _gradients(schedule, recipe: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sm = splitfx.convert(MLP(), torch.randn(4, 6), 3, recipe=recipe)
    me = Rank(Grid(0, 1, 1, torch.device("cpu"), 30), Stage(sm, 0, 3), torch.optim.SGD(sm.parameters(), lr=0.0),
              schedule=schedule)
    g = torch.Generator().manual_seed(1)
    losses = me.train_step(0, (torch.randn(7, 6, generator=g), torch.randint(0, 3, (7,), generator=g)))
    return losses, {n: p.grad for n, p in sm.named_parameters()}


@pytest.mark.parametrize("parts", [2, 3])
def test_micro_batches_give_the_gradients_of_the_whole_batch(parts):
    """Seven samples in unequal parts (4+3, 3+2+2): each part's mean loss weighted by its share. A
    recipe linear in the batch (``linear``: pool + Linear heads, cross-entropy means; ``dgl``'s and
    ``infopro``'s heads hold BatchNorm, whose statistics are per part)."""
    losses, grads = _gradients(Streaming(), "linear")
    split_losses, split_grads = _gradients(MicroBatches(parts), "linear")
    assert split_losses == pytest.approx(losses, rel=1e-5)
    assert grads.keys() == split_grads.keys() and all(g is not None for g in grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(split_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_more_micro_batches_than_samples_is_refused():
    with pytest.raises(ArgumentError, match="cannot be split into 8 micro-batches"):
        _gradients(MicroBatches(8), "linear")
