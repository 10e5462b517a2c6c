"""The CIFAR ResNets of He et al. (2016) as InfoPro, DGL, MAN, HPFF and MLAAN train them.

Three stages of ``n`` basic blocks at 16, 32 and 64 channels on 32×32 inputs (depth ``6n + 2``:
ResNet-32 is n = 5, ResNet-110 n = 18), a 3×3 stem without pooling, and a 1×1 convolution with
batch norm where a block changes shape: the network of InfoPro's ``networks/resnet.py``, whose
memory tables the papers report.
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and a residual connection."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 images. ``pretrained_cfg`` tells splitfx's CLI its input size."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, name: str | None = None):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be at least 1, got {blocks_per_stage}")
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        widths, inplanes, stages = (16, 32, 64), 16, []
        for i, planes in enumerate(widths):
            layers = [BasicBlock(inplanes if j == 0 else planes, planes, 2 if i and j == 0 else 1)
                      for j in range(blocks_per_stage)]
            stages.append(nn.Sequential(*layers))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self.pretrained_cfg = {"architecture": name or f"resnet{6 * blocks_per_stage + 2}",
                               "input_size": (3, 32, 32), "num_classes": num_classes}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage)."""
    return CifarResNet(5, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage), the network of InfoPro's and HPFF's memory tables."""
    return CifarResNet(18, num_classes)
