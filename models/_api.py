"""The model registry: one dict of builders, like torchvision's ``models/_api.py``.

Every entry carries what serving needs besides the network itself: the input spec (channels, size,
normalization, colour order, resize policy) and the class labels. ``get_model`` builds a network with
its weights resolved by :mod:`models.weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from modelrepo.preprocess import IMAGENET_INPUT, InputSpec


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    builder: Callable[..., nn.Module]
    input_spec: InputSpec
    family: str
    num_classes: int = 1000
    labels: Sequence[str] | None = None  # None: ImageNet categories (from torchvision, offline)
    torchvision_weights: str | None = None  # name of torchvision's weights enum, e.g. "ResNet50_Weights"
    published_params: int | None = None  # parameter count at the default num_classes
    torchvision_builder: str | None = None  # torchvision.models function, used to load its weights


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    input_spec: InputSpec = IMAGENET_INPUT,
    family: str,
    num_classes: int = 1000,
    labels: Sequence[str] | None = None,
    torchvision_weights: str | None = None,
    published_params: int | None = None,
    torchvision_builder: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a builder ``fn(num_classes=..., **kwargs) -> nn.Module``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelEntry(
            name=name,
            builder=fn,
            input_spec=input_spec,
            family=family,
            num_classes=num_classes,
            labels=tuple(labels) if labels is not None else None,
            torchvision_weights=torchvision_weights,
            published_params=published_params,
            torchvision_builder=torchvision_builder,
        )
        return fn

    return wrap


class UnknownModelError(KeyError):
    """The name is not in the registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _MODELS[name.lower()]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def get_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | None = "random",
    seed: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model in eval mode.

    ``weights``: ``"random"`` (seeded with ``seed``), ``"imagenet"`` (torchvision's pretrained weights,
    from the local torch hub cache only), or a path to a checkpoint written by ``models.train`` or a plain
    state dict. See :func:`models.weights.load_model` for the details and the errors it raises.
    """
    from models.weights import load_model

    return load_model(name, num_classes=num_classes, weights=weights, seed=seed, **kwargs).model


def get_labels(name: str, num_classes: int | None = None) -> list[str]:
    """Class labels of a registered model: its own, ImageNet's, or ``class_<i>`` for a custom head."""
    entry = get_model_entry(name)
    n = entry.num_classes if num_classes is None else num_classes
    if n == entry.num_classes:
        if entry.labels is not None:
            return list(entry.labels)
        if entry.num_classes == 1000:
            return imagenet_categories()
    return [f"class_{i}" for i in range(n)]


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names torchvision ships in its weights metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
