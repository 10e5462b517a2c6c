"""Assertions shared by the test modules: equality, gradient equality, gradient isolation, and the
measured saved bytes of a step."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import splitfx
from splitfx.base.meter import SavedTensorMeter, state_keys
from splitfx.runtime.isolation import expected_reach


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_eval_equal(sm: splitfx.SplitModule, model: torch.nn.Module, x: torch.Tensor) -> None:
    sm.eval()
    with torch.no_grad():
        ref, out, staged = model(x), sm(x), sm.chained(x)
    if not sm.recipe.traits.infers:  # an infers recipe's forward is its heads' prediction (tests/test_ffr.py)
        assert torch.equal(out, ref)
    assert torch.equal(staged, ref), "running the blocks one after another must equal the model"


def assert_interleaved_equals_summed(sm: splitfx.SplitModule, x: torch.Tensor, y: torch.Tensor) -> None:
    """Backward after every block == one backward over the sum of all local losses (bit for bit)."""
    sm.train()
    torch.manual_seed(0)
    sm.zero_grad(set_to_none=True)
    for loss in sm.local_losses(x, y):
        assert torch.isfinite(loss)
        loss.backward()
    interleaved = grads(sm)
    torch.manual_seed(0)
    sm.zero_grad(set_to_none=True)
    torch.stack(list(sm.local_losses(x, y))).sum().backward()
    summed = grads(sm)
    assert interleaved.keys() == summed.keys()
    assert interleaved, "no parameter received a gradient"
    for name in interleaved:
        assert torch.equal(interleaved[name], summed[name]), name


def assert_isolated(sm: splitfx.SplitModule, x: torch.Tensor, y: torch.Tensor) -> list[set[str]]:
    """Observed, not trusted: after loss k's backward alone, exactly the parameters of the blocks
    ``recipe.reaches(k)`` and of the aux modules ``recipe.aux_reaches(k, heads)`` (head k unless the
    recipe says otherwise, e.g. a block with no loss of its own) have a gradient; no backbone
    parameter belongs to two blocks; every trainable parameter, backbone and aux heads, is reached by
    some loss; every loss is finite and has a grad path. Returns, per k, the names of the parameters
    that got a gradient."""
    sm.train()
    names = {id(p): n for n, p in sm.named_parameters()}
    owners: dict[str, int] = {}
    for k in range(sm.num_blocks):
        for p in sm.block_parameters(k):
            name = names[id(p)]
            assert owners.setdefault(name, k) == k, f"{name} is listed in blocks {owners[name]} and {k}"
    reached = []
    for k in range(sm.num_blocks):
        torch.manual_seed(0)
        sm.zero_grad(set_to_none=True)
        for i, loss in enumerate(sm.local_losses(x, y)):
            assert torch.isfinite(loss), (k, i)
            assert loss.requires_grad, f"loss {i} has no grad path"
            if i == k:
                loss.backward()
        got = {n for n, p in sm.named_parameters() if p.grad is not None}
        expected = expected_reach(sm, k)
        unexpected, missing = sorted(got - expected)[:5], sorted(expected - got)[:5]
        assert got == expected, f"block {k}: unexpected {unexpected}, missing {missing}"
        reached.append(got)
    trainable = {n for n, p in sm.named_parameters() if p.requires_grad}
    unreached = trainable - set().union(*reached)
    assert not unreached, f"no loss trains {sorted(unreached)[:5]}"
    return reached


def measure(sm: splitfx.SplitModule, x, y, loss_fn=F.cross_entropy) -> tuple[int, list[int]]:
    """(E2E peak, per-block local peaks) of live saved bytes, parameters and buffers excluded, with
    ``loss_fn`` on the model's output for E2E."""
    sm.train()
    with SavedTensorMeter(state_keys([sm])) as meter:
        loss_fn(sm(x), y).backward()
        e2e = meter.peak
        assert meter.live == 0
        sm.zero_grad(set_to_none=True)
        meter.mark()
        blocks = []
        for loss in sm.local_losses(x, y):
            blocks.append(meter.peak)
            loss.backward()
            meter.mark()
    return e2e, blocks
