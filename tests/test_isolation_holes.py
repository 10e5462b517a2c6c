"""Isolation holes: parameters used on both sides of a cut, blocks with nothing to train, heads on
tensors whose dim 0 is not the batch. Every check observes gradients (checks.assert_isolated)."""
import pytest
import timm
import torch
from torch import nn

import splitfx

from checks import assert_eval_equal, assert_interleaved_equals_summed, assert_isolated


class SharedScale(nn.Module):
    """One parameter read at the start and at the end, two layers apart."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, 8))
        self.a, self.b, self.c, self.d = (nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.a(x * self.scale))
        x = torch.relu(self.b(x))
        x = torch.relu(self.c(x)) * self.scale.sigmoid()
        return self.head(torch.relu(self.d(x)))


class SharedModule(nn.Module):
    """One module called twice (as CoaT's shared positional convolution)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pos = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.body1, self.body2, self.body3 = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.body1(x + self.pos(x)))
        x = torch.relu(self.body2(x + self.pos(x)))
        x = torch.relu(self.body3(x))
        return self.fc(x.mean((2, 3)))


class ParameterFreeTail(nn.Module):
    """Everything after the last layer is arithmetic: a block there would have nothing to train."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        x = torch.tanh(self.b(torch.relu(self.a(x))))
        x = x * 2.0
        x = x - x.mean(1, keepdim=True)
        return x.exp().log()


class FoldsBatch(nn.Module):
    """A stretch where dim 0 is 2·B (as EfficientViM's heads): no aux head may read it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner1, self.inner2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        b, _, height, width = x.shape
        x = torch.relu(self.stem(x))
        h = x.reshape(b * 2, 4, height, width)
        h = torch.relu(self.inner2(torch.relu(self.inner1(h))))
        x = torch.relu(self.out(h.reshape(b, 8, height, width)))
        return self.fc(x.mean((2, 3)))


def _check(model, x, num_blocks):
    y = torch.randint(0, 3, (x.shape[0],))
    sm = splitfx.convert(model, x, num_blocks)
    assert sm.num_blocks == num_blocks
    assert_eval_equal(sm, model, x)
    assert_interleaved_equals_summed(sm, x, y)
    assert_isolated(sm, x, y)
    return sm


def test_a_parameter_used_twice_is_never_separated_from_itself():
    model, x = SharedScale(), torch.randn(4, 8)
    plan = splitfx.plan(model, x, 2)
    assert plan.shared_parameters == ["scale"]
    sm = _check(model, x, 2)
    owners = [k for k in range(sm.num_blocks) if any(p is model.scale for p in sm.block_parameters(k))]
    assert owners == [0] and not any("scale" in b.code for b in sm.blocks[1:])


def test_a_module_called_twice_stays_in_one_block():
    model, x = SharedModule(), torch.randn(2, 3, 8, 8)
    plan = splitfx.plan(model, x, 3)
    assert plan.shared_parameters == ["pos.bias", "pos.weight"]
    sm = _check(model, x, 3)
    holders = [k for k, b in enumerate(sm.blocks) if any(n.target == "model.pos" for n in b.graph.nodes)]
    assert len(holders) == 1


def test_no_block_is_left_without_anything_to_train():
    model, x = ParameterFreeTail(), torch.randn(4, 6)
    plan = splitfx.plan(model, x, 2)
    assert all(b.params > 0 for b in plan.blocks)
    with pytest.raises(splitfx.PlanError, match="at most 2 blocks") as info:
        splitfx.plan(model, x, 3)
    assert info.value.max_blocks == 2
    _check(model, x, 2)


def test_no_head_reads_a_tensor_whose_dim0_is_not_the_batch():
    model, x = FoldsBatch(), torch.randn(2, 3, 8, 8)
    plan = splitfx.plan(model, x, 3)
    assert any(b.output_shapes for b in plan.blocks)
    assert all(b.output_shapes is None or all(s[0] == 2 for s in b.output_shapes) for b in plan.blocks)
    _check(model, x, 3)


@pytest.mark.parametrize("name", ["efficientvim_m1_dist", "efficientvim_m2", "coat_lite_tiny", "crossvit_9_dagger_240"])
def test_models_that_broke_isolation_now_hold_it(name):
    """CrossViT's two branches meet only at the end: its cuts hand over both branches' tokens."""
    model = timm.create_model(name, num_classes=3)
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    _check(model, x, 4)
