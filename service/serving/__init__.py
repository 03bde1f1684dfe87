"""The served models: a loaded version (:mod:`.served`), how one is built (:mod:`.loader`), and the manager
of every model's lifecycle (:mod:`.manager`)."""

from service.serving.manager import READY, UNAVAILABLE, ModelManager, RepositoryEntry
from service.serving.served import InflightCounter, ServedVersion

__all__ = [
    "READY",
    "UNAVAILABLE",
    "InflightCounter",
    "ModelManager",
    "RepositoryEntry",
    "ServedVersion",
]
