"""MobileNetV2 with torchvision's architecture, module names and state_dict keys.

The keys are torchvision's (features.0.0.weight, features.0.1.running_mean,
features.1.conv.0.0.weight, ..., features.18.0.weight, classifier.1.weight), so
torchvision checkpoints load with `load_state_dict` and our state_dicts load
into torchvision.models.mobilenet_v2. The default model has torchvision's
3,504,872 parameters (1000 classes). Initialisation is torchvision's:
convolutions kaiming_normal_(mode="fan_out") (gain sqrt(2); a depthwise
weight (C, 1, 3, 3) has fan_out C*9, as torch counts it), BatchNorm weight 1 /
bias 0, Linear weight N(0, 0.01) / bias 0, all drawn from edgetrain's
generator (`edgetrain.manual_seed` makes it reproducible).

Differences from torchvision, none of which changes a key:
- ``in_channels`` (torchvision: always 3) sets the first conv's input channels;
- ``small_input=True`` (28x28 / 32x32 images, MNIST / CIFAR-style): the first
  conv (features.0.0, 3x3) has stride 1 instead of 2, so a 32x32 input reaches
  the last block at 2x2 instead of 1x1 (the same weight shape; a torchvision
  checkpoint still loads, though its features were learnt at stride 2);
- no ``inverted_residual_setting`` / ``block`` / ``norm_layer`` options.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import nn
from ..nn import functional as F

__all__ = ["MobileNetV2", "InvertedResidual", "Conv2dNormActivation", "mobilenet_v2"]


def _make_divisible(v, divisor, min_value=None):
    """torchvision's channel rounding: the multiple of `divisor` nearest to v (at
    least min_value, default divisor), bumped up one step if that loses > 10%."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation as MobileNetV2 uses it: children
    0 Conv2d (k x k, padding (k-1)//2, no bias), 1 BatchNorm2d, 2 ReLU6.
    (N, in, H, W) -> (N, out, ceil(H / stride), ceil(W / stride)) for odd k."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """MobileNetV2's block; `conv` is a Sequential:
        [0 expand 1x1 (inp -> hidden) + BN + ReLU6, only when expand_ratio != 1]
        depthwise 3x3 (groups=hidden, stride) + BN + ReLU6
        project 1x1 (hidden -> oup), then its BN: no activation ("linear bottleneck").
    hidden = round(inp * expand_ratio). out = x + conv(x) when stride 1 and
    inp == oup (use_res_connect), else conv(x).
    Shapes: (N, inp, H, W) -> (N, oup, H / stride, W / stride) (rounded up)."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride should be 1 or 2, got {stride!r}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers += [
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2.

    features: 0 Conv2dNormActivation(in_channels -> 32w, 3x3, stride 2; stride 1
    with small_input), 1..17 InvertedResidual per (t, c, n, s) of
    INVERTED_RESIDUAL_SETTING (the first of each group has stride s), 18
    Conv2dNormActivation(320w -> last_channel, 1x1); then global average pool,
    flatten, classifier = Sequential(Dropout(dropout), Linear(last_channel,
    num_classes)). Channel counts c * width_mult are rounded by
    _make_divisible(., round_nearest); last_channel = 1280 * max(1, width_mult).

    Shapes (224x224): x (N, C, 224, 224) -> features.0 (N, 32, 112, 112) -> 1 (16, 112)
    -> 2-3 (24, 56) -> 4-6 (32, 28) -> 7-10 (64, 14) -> 11-13 (96, 14) -> 14-16 (160, 7)
    -> 17 (320, 7) -> 18 (1280, 7, 7) -> pool (N, 1280) -> classifier (N, num_classes).
    small_input, 32x32: features.0 keeps 32x32, features.18 gives (N, 1280, 2, 2).
    """

    # t (expansion), c (output channels), n (blocks), s (stride of the first)
    INVERTED_RESIDUAL_SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes=1000, in_channels=3, width_mult=1.0, small_input=False,
                 dropout=0.2, round_nearest=8):
        super().__init__()
        if not isinstance(width_mult, numbers.Real) or isinstance(width_mult, bool) \
                or not 0 < width_mult < math.inf:
            raise ValueError(f"MobileNetV2: width_mult must be a positive finite number, "
                             f"got {width_mult!r}")
        self.small_input = bool(small_input)
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [Conv2dNormActivation(in_channels, input_channel,
                                         stride=1 if small_input else 2)]
        for t, c, n, s in self.INVERTED_RESIDUAL_SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel,
                                                 s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(self.last_channel, num_classes))
        self._init_weights()

    def _init_weights(self):
        """torchvision's init, in its order (self.modules()): Conv2d
        kaiming_normal_(fan_out, gain sqrt(2)), BatchNorm2d 1 / 0, Linear N(0, 0.01) / 0.

        Values are drawn from edgetrain's default generator and loaded through
        load_state_dict (as ResNet does), so the result does not depend on how a
        Tensor stores data."""
        from .. import random as _random

        gen = _random.default_generator()
        sd = self.state_dict()
        for name, m in self.named_modules():
            pre = name + "." if name else ""
            if isinstance(m, nn.Conv2d):
                w = sd[pre + "weight"]                    # (OC, C/G, KH, KW)
                oc, _, kh, kw = w.shape
                std = math.sqrt(2.0) / math.sqrt(oc * kh * kw)
                sd[pre + "weight"] = (gen.standard_normal(w.shape) * std).astype(np.float32)
                if m.bias is not None:
                    sd[pre + "bias"] = np.zeros_like(np.asarray(sd[pre + "bias"]))
            elif isinstance(m, nn.BatchNorm2d):
                sd[pre + "weight"] = np.ones_like(np.asarray(sd[pre + "weight"]))
                sd[pre + "bias"] = np.zeros_like(np.asarray(sd[pre + "bias"]))
            elif isinstance(m, nn.Linear):
                w = sd[pre + "weight"]                    # (out, in)
                sd[pre + "weight"] = (gen.standard_normal(w.shape) * 0.01).astype(np.float32)
                sd[pre + "bias"] = np.zeros_like(np.asarray(sd[pre + "bias"]))
        self.load_state_dict(sd, strict=True)

    def forward(self, x):
        x = self.features(x)
        # (N, C, H, W) -> (N, C, 1, 1) -> (N, C); torchvision calls the functional
        # pool too (no avgpool module, no key)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = x.flatten(1)
        return self.classifier(x)


def mobilenet_v2(num_classes=1000, in_channels=3, width_mult=1.0, small_input=False,
                 dropout=0.2) -> MobileNetV2:
    """MobileNetV2, torchvision's layout (see `MobileNetV2`).

    small_input=True: the first conv has stride 1, for 28x28 / 32x32 images (a
    28x28 input reaches the last block at 2x2 instead of 1x1)."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels,
                       width_mult=width_mult, small_input=small_input, dropout=dropout)
