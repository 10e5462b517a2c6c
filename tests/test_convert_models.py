"""Conversion of the reference models: eval outputs equal, gradients equal, blocks isolated."""
import pytest
import timm
import torch
import torchvision
from torch import nn

import splitfx

from checks import assert_eval_equal, assert_interleaved_equals_summed, assert_isolated

TIMM = {
    "resnet18": 64,
    "resnet50": 64,
    "efficientnet_b0": 64,
    "mobilenetv3_small_100": 64,
    "convnext_atto": 64,
    "regnetx_002": 64,
    "densenet121": 64,
    "vit_tiny_patch16_224": 224,
    "deit_tiny_distilled_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
    "levit_128s": 224,
    "mixer_s16_224": 224,
    "poolformer_s12": 64,
    "coat_lite_tiny": 224,
}


class SmallCNN(nn.Module):
    """A user's own model: in-place activations, a residual, a functional head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.act3 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x) + x)
        x = self.act3(self.conv3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _check(model: nn.Module, size: int, num_classes: int, batch: int = 2, **kwargs) -> splitfx.SplitModule:
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, num_classes, (batch,))
    sm = splitfx.convert(model, x, num_blocks=4, **kwargs)
    assert sm.num_blocks == 4
    assert_eval_equal(sm, model, x)
    assert_interleaved_equals_summed(sm, x, y)
    assert_isolated(sm, x, y)
    return sm


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_model(name):
    _check(timm.create_model(name, num_classes=10), TIMM[name], 10)


def test_torchvision_resnet18():
    _check(torchvision.models.resnet18(num_classes=10), 64, 10)


def test_custom_cnn_blocks_call_the_users_own_modules():
    model = SmallCNN()
    sm = _check(model, 16, 10)
    calls = [(b, n.target) for b in sm.blocks for n in b.graph.nodes if n.op == "call_module"]
    assert len(calls) >= 7
    for block, target in calls:
        assert block.get_submodule(target) is model.get_submodule(target[len("model."):])


def test_inplace_first_op_gets_clone():
    model = SmallCNN()
    x = torch.randn(2, 3, 16, 16)
    sm = splitfx.convert(model, x, split_points=["bn1"])
    assert "clone" in sm.blocks[1].code and "detach" in sm.blocks[1].code
    assert_interleaved_equals_summed(sm, x, torch.randint(0, 10, (2,)))
