"""edgetrain.models: LeNet and torchvision-compatible ResNets and MobileNetV2."""
from .lenet import LeNet, lenet
from .mobilenet import Conv2dNormActivation, InvertedResidual, MobileNetV2, mobilenet_v2
from .resnet import ResNet, BasicBlock, Bottleneck, resnet18, resnet34, resnet50

__all__ = ["LeNet", "lenet", "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
           "MobileNetV2", "InvertedResidual", "Conv2dNormActivation", "mobilenet_v2"]
