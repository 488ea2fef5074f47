"""LeNet-5 with BatchNorm, for 28x28 single-channel images (MNIST, Fashion-MNIST)."""
from __future__ import annotations

from .. import nn

__all__ = ["LeNet", "lenet"]


class LeNet(nn.Module):
    """conv(5x5, pad 2) -> BN -> ReLU -> maxpool 2 -> conv(5x5) -> BN -> ReLU -> maxpool 2
    -> fc 400->120 -> ReLU -> fc 120->84 -> ReLU -> fc 84->num_classes.

    Shapes for a 28x28 input: (N, C, 28, 28) -> conv1 (N, 6, 28, 28) -> pool (N, 6, 14, 14)
    -> conv2 (N, 16, 10, 10) -> pool (N, 16, 5, 5) -> flatten (N, 400) -> (N, num_classes).
    Parameters use the layers' default (PyTorch) initialisation.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def lenet(num_classes: int = 10, in_channels: int = 1) -> LeNet:
    """A small CNN with BatchNorm for 28x28 inputs (see `LeNet`)."""
    return LeNet(num_classes=num_classes, in_channels=in_channels)
