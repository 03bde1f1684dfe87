"""Resolving ``weights=``: seeded random, torchvision's ImageNet weights from the local cache, or a file.

No downloads ever happen here: ImageNet weights must already sit in torch hub's cache
(``$TORCH_HOME/hub/checkpoints``), where torchvision's weights API looks first.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from modelrepo.manifest import sha256_file
from modelrepo.preprocess import InputSpec
from models._api import ModelEntry, get_labels, get_model_entry

CHECKPOINT_FORMAT = "cnnserve-checkpoint/1"


class WeightsError(RuntimeError):
    """Weights cannot be found, read, or do not fit the architecture."""


@dataclass
class LoadedModel:
    """A built network plus everything an exporter needs to record about it."""

    name: str
    model: nn.Module
    num_classes: int
    labels: list[str]
    input_spec: InputSpec
    weights: dict[str, Any] = field(default_factory=dict)  # provenance: source, seed/path, sha256


def imagenet_weights_file(entry: ModelEntry) -> tuple[Any, Path]:
    """torchvision's default ImageNet weights enum member for ``entry`` and its cache path."""
    if entry.torchvision_weights is None:
        raise WeightsError(
            f"{entry.name} has no published ImageNet weights; use random weights or a checkpoint path"
        )
    weights = getattr(tvm, entry.torchvision_weights).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return weights, cache


def _build(entry: ModelEntry, num_classes: int, seed: int, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    return entry.builder(num_classes=num_classes, **kwargs)


def _load_imagenet(entry: ModelEntry, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    weights, cache = imagenet_weights_file(entry)
    if num_classes not in (None, 1000):
        raise WeightsError(f"ImageNet weights have 1000 classes, not {num_classes}")
    if not cache.is_file():
        raise WeightsError(
            f"ImageNet weights for {entry.name} are not in the local cache: expected {cache}. "
            f"This machine does not download; fetch {weights.url} elsewhere and copy it to that path "
            f"(or point TORCH_HOME at a folder whose hub/checkpoints holds it)."
        )
    # torchvision's builder finds the cached file and checks its hash prefix; nothing is downloaded.
    model = getattr(tvm, entry.torchvision_builder)(weights=weights)
    return model, {"source": "imagenet", "name": str(weights), "path": str(cache),
                   "sha256": sha256_file(cache)}  # fmt: skip


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return obj


def _load_checkpoint(
    entry: ModelEntry, path: Path, num_classes: int | None, seed: int, **kwargs: Any
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    obj = _read_checkpoint(path)
    meta: dict[str, Any] = {}
    state = obj
    if obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("model") != entry.name:
            raise WeightsError(f"{path} is a checkpoint of {obj.get('model')!r}, not {entry.name!r}")
        state = obj["state_dict"]
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    n = meta.get("num_classes") or num_classes or _classes_in_state(state) or entry.num_classes
    if num_classes is not None and num_classes != n:
        raise WeightsError(f"{path} has {n} classes, not the {num_classes} asked for")
    model = _build(entry, n, seed, **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path} does not fit {entry.name}: {e}") from None
    info = {"source": "checkpoint", "path": str(path), "sha256": sha256_file(path)}
    return model, info, meta


def _classes_in_state(state: dict[str, Any]) -> int | None:
    """Number of classes of a plain state dict: rows of its last 2-D weight (the classifier)."""
    last = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(last[-1].shape[0]) if last else None


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of the parameters and buffers, so random weights are identified too."""
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = "random",
    seed: int = 0,
    **kwargs: Any,
) -> LoadedModel:
    """Build ``name`` with its weights in eval mode; raise :class:`WeightsError` with the remedy."""
    entry = get_model_entry(name)
    spec, labels = entry.input_spec, None
    weights = "random" if weights is None else weights
    if weights == "random":
        n = num_classes or entry.num_classes
        model = _build(entry, n, seed, **kwargs)
        info = {"source": "random", "seed": seed}
    elif weights == "imagenet":
        model, info = _load_imagenet(entry, num_classes)
        n = 1000
    else:
        model, info, meta = _load_checkpoint(entry, Path(weights), num_classes, seed, **kwargs)
        n = meta.get("num_classes") or _classes_in_state(model.state_dict()) or entry.num_classes
        labels = meta.get("labels")
        if meta.get("input_spec"):
            spec = InputSpec.from_dict(meta["input_spec"])
        info["trained"] = {k: meta[k] for k in ("dataset", "metrics", "epochs") if k in meta}
    model.eval()
    info["state_sha256"] = state_dict_sha256(model)
    info.setdefault("sha256", info["state_sha256"])
    return LoadedModel(
        name=entry.name,
        model=model,
        num_classes=n,
        labels=list(labels) if labels else get_labels(entry.name, n),
        input_spec=spec,
        weights=info,
    )


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    name: str,
    num_classes: int,
    labels: list[str],
    input_spec: InputSpec,
    **meta: Any,
) -> Path:
    """Write a checkpoint ``load_model(weights=path)`` reads back (``torch.load(weights_only=True)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": name,
        "num_classes": num_classes,
        "labels": list(labels),
        "input_spec": input_spec.to_dict(),
        "torch": str(torch.__version__),
        **meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path
