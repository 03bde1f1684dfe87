"""The family members torchvision already has, registered as data.

Published parameter counts (1000 classes) are those of the papers / torchvision's model cards.
GoogLeNet is built without the auxiliary classifiers, which exist only for training.
"""

from __future__ import annotations

from functools import partial

import torchvision.models as tvm
from torch import nn

from models._api import register_model

# name: (torchvision builder name, weights enum name, family, published parameter count, extra kwargs)
_TORCHVISION = {
    "alexnet": ("alexnet", "AlexNet_Weights", "alexnet", 61_100_840, {}),
    "vgg11": ("vgg11", "VGG11_Weights", "vgg", 132_863_336, {}),
    "vgg11_bn": ("vgg11_bn", "VGG11_BN_Weights", "vgg", 132_868_840, {}),
    "vgg13": ("vgg13", "VGG13_Weights", "vgg", 133_047_848, {}),
    "vgg13_bn": ("vgg13_bn", "VGG13_BN_Weights", "vgg", 133_053_736, {}),
    "vgg16": ("vgg16", "VGG16_Weights", "vgg", 138_357_544, {}),
    "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights", "vgg", 138_365_992, {}),
    "vgg19": ("vgg19", "VGG19_Weights", "vgg", 143_667_240, {}),
    "vgg19_bn": ("vgg19_bn", "VGG19_BN_Weights", "vgg", 143_678_248, {}),
    "googlenet": (
        "googlenet",
        "GoogLeNet_Weights",
        "googlenet",
        6_624_904,
        {"aux_logits": False, "init_weights": True},
    ),
    "resnet18": ("resnet18", "ResNet18_Weights", "resnet", 11_689_512, {}),
    "resnet34": ("resnet34", "ResNet34_Weights", "resnet", 21_797_672, {}),
    "resnet50": ("resnet50", "ResNet50_Weights", "resnet", 25_557_032, {}),
    "resnet101": ("resnet101", "ResNet101_Weights", "resnet", 44_549_160, {}),
    "resnet152": ("resnet152", "ResNet152_Weights", "resnet", 60_192_808, {}),
    "densenet121": ("densenet121", "DenseNet121_Weights", "densenet", 7_978_856, {}),
    "densenet161": ("densenet161", "DenseNet161_Weights", "densenet", 28_681_000, {}),
    "densenet169": ("densenet169", "DenseNet169_Weights", "densenet", 14_149_480, {}),
    "densenet201": ("densenet201", "DenseNet201_Weights", "densenet", 20_013_928, {}),
}


def _build(tv_name: str, extra: dict, num_classes: int = 1000, **kwargs) -> nn.Module:
    return getattr(tvm, tv_name)(weights=None, num_classes=num_classes, **{**extra, **kwargs})


for _name, (_tv, _weights, _family, _params, _extra) in _TORCHVISION.items():
    register_model(
        _name,
        family=_family,
        torchvision_weights=_weights,
        torchvision_builder=_tv,
        published_params=_params,
    )(partial(_build, _tv, _extra))
