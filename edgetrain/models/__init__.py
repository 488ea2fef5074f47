"""edgetrain.models: LeNet and torchvision-compatible ResNets."""
from .lenet import LeNet, lenet
from .resnet import ResNet, BasicBlock, Bottleneck, resnet18, resnet34, resnet50

__all__ = ["LeNet", "lenet", "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50"]
