"""ResNet-18/34/50 with torchvision's architecture, module names and state_dict keys.

The keys are torchvision's (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0,
..., fc), so torchvision checkpoints load with `load_state_dict` and our
state_dicts load into torchvision models. Initialisation is torchvision's:
convolutions kaiming_normal_(mode="fan_out", nonlinearity="relu"), BatchNorm
weight 1 / bias 0, Linear its default, all drawn from edgetrain's generator
(`edgetrain.manual_seed` makes it reproducible).

``small_input=True`` (28x28 / 32x32 images, CIFAR-style): the stem conv1 is
3x3 stride 1 padding 1 (no bias) and there is no max-pool (`maxpool` is an
Identity, which has no state); every other key and shape is unchanged.
"""
from __future__ import annotations

import math

import numpy as np

from .. import nn

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50"]


if hasattr(nn, "Identity"):
    _Identity = nn.Identity
else:
    class _Identity(nn.Module):
        """Returns its input (torch.nn.Identity); no parameters, no buffers."""

        def forward(self, x):
            return x


def _conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        if downsample is not None:
            self.downsample = downsample
        else:
            self.downsample = None
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, torchvision "v1.5") -> 1x1 expand (x4), plus shortcut."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        if downsample is not None:
            self.downsample = downsample
        else:
            self.downsample = None
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet (without zero_init_residual / groups / width options).

    Shapes (default stem, 224x224): x (N, C, 224, 224) -> conv1 s2 (N, 64, 112, 112)
    -> maxpool (N, 64, 56, 56) -> layer1 56 -> layer2 28 -> layer3 14 -> layer4 7
    -> avgpool (N, 512*E, 1, 1) -> flatten -> fc (N, num_classes); E = block.expansion.
    small_input: conv1 3x3 s1, no max-pool: 32x32 -> layer1 32 -> ... -> layer4 4.
    """

    def __init__(self, block, layers, num_classes=1000, in_channels=3, small_input=False):
        super().__init__()
        self.inplanes = 64
        self.small_input = bool(small_input)
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = _Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights()

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def _init_weights(self):
        """torchvision's init: kaiming_normal_(fan_out, relu) for convs, BN 1/0.

        Values are drawn from edgetrain's default generator in module order (as
        torchvision's loop over self.modules()) and loaded through
        load_state_dict, so the result does not depend on how a Tensor stores data.
        """
        from .. import random as _random

        gen = _random.default_generator()
        sd = self.state_dict()
        # Only the contract's state_dict is used: a 4-d ".weight" is a conv
        # weight (OC, C/G, KH, KW); a prefix with "running_mean" is a BatchNorm.
        for key in list(sd):
            w = np.asarray(sd[key])
            if key.endswith(".weight") and w.ndim == 4:
                oc, _, kh, kw = w.shape
                fan_out = oc * kh * kw
                std = math.sqrt(2.0) / math.sqrt(fan_out)  # gain(relu) / sqrt(fan_out)
                sd[key] = (gen.standard_normal(w.shape) * std).astype(np.float32)
            elif key.endswith(".running_mean"):
                prefix = key[: -len("running_mean")]
                sd[prefix + "weight"] = np.ones_like(np.asarray(sd[prefix + "weight"]))
                sd[prefix + "bias"] = np.zeros_like(np.asarray(sd[prefix + "bias"]))
        self.load_state_dict(sd, strict=True)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.fc(x)


def resnet18(num_classes=1000, in_channels=3, small_input=False) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]), torchvision's layout."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, small_input)


def resnet34(num_classes=1000, in_channels=3, small_input=False) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]), torchvision's layout."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, small_input)


def resnet50(num_classes=1000, in_channels=3, small_input=False) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]), torchvision's layout."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, small_input)
