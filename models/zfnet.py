"""ZFNet (Zeiler & Fergus, 2013), written in the style of torchvision's AlexNet.

AlexNet with a 7x7 stride-2 first layer (instead of 11x11 stride 4), a stride-2 5x5 second layer,
and the wider conv3-5 of the paper's larger model (512, 1024, 512 filters). Local response
normalization follows layers 1 and 2, as in the paper. Spatial sizes at 224x224 input are the
paper's: 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6.
"""

from __future__ import annotations

import torch
from torch import nn

from models._api import register_model

# Parameters at 1000 classes, from the layer sizes above (the paper gives no exact total).
ZFNET_PARAMS = 107_627_624


class ZFNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0),
            nn.Conv2d(96, 256, kernel_size=5, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0),
            nn.Conv2d(256, 512, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 1024, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 512, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(512 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("zfnet", family="zfnet", published_params=ZFNET_PARAMS)
def zfnet(num_classes: int = 1000) -> ZFNet:
    return ZFNet(num_classes=num_classes)
