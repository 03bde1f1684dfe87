"""LeNet-5 (LeCun et al., 1998), in torchvision's style.

1x32x32 input, tanh activations, parameter-free average subsampling, and a fully connected C3
(every C3 map sees all six S2 maps, not the paper's sparse table): 61,706 parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from models._api import InputSpec, register_model

DIGITS_INPUT = InputSpec(1, 32, 32, mean=(0.5,), std=(0.5,), color="L", resize=None)
DIGIT_LABELS = tuple(str(i) for i in range(10))


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # C1: 6x28x28
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),  # S2: 6x14x14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 16x10x10
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),  # S4: 16x5x5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),  # C5
            nn.Tanh(),
            nn.Linear(120, 84),  # F6
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(
    "lenet5",
    input_spec=DIGITS_INPUT,
    family="lenet",
    num_classes=10,
    labels=DIGIT_LABELS,
    published_params=61_706,
)
def lenet5(num_classes: int = 10) -> LeNet5:
    return LeNet5(num_classes=num_classes)
