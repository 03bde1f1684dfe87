"""The classic CNN family: ``list_models()``, ``get_model(name, num_classes=..., weights=...)``."""

from models import lenet, torchvision_family, zfnet  # noqa: F401  (register the builders)
from models._api import (
    InputSpec,
    ModelEntry,
    UnknownModelError,
    get_labels,
    get_model,
    get_model_entry,
    list_models,
    register_model,
)
from models.weights import LoadedModel, WeightsError, load_model, save_checkpoint

__all__ = [
    "InputSpec",
    "LoadedModel",
    "ModelEntry",
    "UnknownModelError",
    "WeightsError",
    "get_labels",
    "get_model",
    "get_model_entry",
    "list_models",
    "load_model",
    "register_model",
    "save_checkpoint",
]
