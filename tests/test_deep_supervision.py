"""The deep-supervision control (``train_step(detach=False)``, ``--no-detach``): the same heads with
gradient flowing across the cuts, so the detach's effect can be told from the auxiliary losses'."""
import pytest
import torch
from torch import nn

import splitfx
from splitfx.base.errors import ArgumentError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def _grads(sm, x, y, detach):
    opt = torch.optim.SGD(sm.parameters(), lr=0.0)  # lr 0: the step leaves the weights as they are
    losses = sm.train_step(x, y, opt, detach=detach)
    return losses, {n: p.grad.clone() for n, p in sm.named_parameters() if p.grad is not None}


def test_no_detach_sums_every_loss_into_one_backward_through_the_cuts():
    x, y = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randint(0, 5, (6,))
    sm = splitfx.convert(_net().double(), x, num_blocks=2, recipe="linear")  # float64: sums agree to 1e-12
    (head_loss, final_loss), local = _grads(sm, x, y, detach=True)
    (total,), supervised = _grads(sm, x, y, detach=False)
    assert total == pytest.approx(head_loss + final_loss, rel=1e-12)
    # The final loss's own gradient on block 0, as E2E backward computes it.
    sm.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(sm.model(x), y).backward()
    first = sm.block_parameters(0)
    names = {id(p): n for n, p in sm.named_parameters()}
    for p in first:
        name = names[id(p)]
        assert not torch.equal(supervised[name], local[name]), f"{name}: no gradient crossed the cut"
        torch.testing.assert_close(supervised[name], local[name] + p.grad, rtol=1e-10, atol=1e-12)
    # What reads no other loss is unchanged: the last block and the head see the same values.
    for p in [*sm.block_parameters(1), *sm.heads[0].parameters()]:
        torch.testing.assert_close(supervised[names[id(p)]], local[names[id(p)]], rtol=1e-6, atol=0)


def test_no_detach_refuses_what_has_no_deep_supervised_twin():
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    sm = splitfx.convert(_net(), x, num_blocks=3, recipe="hpff")
    opt = torch.optim.SGD(sm.parameters(), lr=0.1)
    with pytest.raises(ArgumentError, match=r"hpff.*cascade"):
        sm.train_step(x, y, opt, detach=False)
    sm = splitfx.convert(_net(), x, num_blocks=2)
    with pytest.raises(ValueError, match="step_each_block"):
        sm.train_step(x, y, opt, detach=False, step_each_block=True)


def test_a_copy_supervises_its_own_blocks():
    import copy

    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    sm = splitfx.convert(_net(), x, num_blocks=3)
    twin = copy.deepcopy(sm)
    twin.train_step(x, y, torch.optim.SGD(twin.parameters(), lr=0.1), detach=False)
    assert all(p.grad is None for p in sm.parameters()), "the copy's step reached the original's parameters"
    assert all(p.grad is not None for p in twin.block_parameters(0))
