"""``python -m models.train MODEL --dataset digits --out PATH``: train a family member, save a checkpoint.

Data is preprocessed by :func:`modelrepo.preprocess.preprocess_image` with the model's input spec
(:mod:`models.datasets`), the split is fixed, and the checkpoint records labels, input spec, dataset
and held-out metrics so ``python -m export MODEL --weights PATH`` can serve and check it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from models._api import UnknownModelError, list_models
from models.datasets import DatasetError, ImageSet, Split, digits_split, folder_split
from models.weights import WeightsError, load_model, save_checkpoint

# Materialize preprocessed tensors up front below this size; stream from disk above it.
IN_MEMORY_BYTES = 512 * 2**20


@dataclass
class TrainResult:
    checkpoint: Path
    heldout_accuracy: float
    train_accuracy: float
    train_loss: float
    epochs: int
    seconds: float
    dataset: dict


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the last ``nn.Linear`` (the classifier of every family member) for one with ``num_classes``."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier to replace")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if old.out_features != num_classes:
        setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


def random_affine(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Per-image random rotation (+-10 deg), scale (0.9..1.1) and shift (+-10%) of a preprocessed batch.

    Applied after preprocessing, to tensors only, so the served preprocessing stays the one function.
    Borders replicate the edge pixels (the background for digits).
    """
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    angle = uniform(-10, 10) * strength * torch.pi / 180
    scale = 1 + uniform(-0.1, 0.1) * strength
    shift = torch.stack([uniform(-0.2, 0.2), uniform(-0.2, 0.2)], 1) * strength  # grid units: 2 = image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    theta = torch.cat([theta, shift[:, :, None]], 2).to(x.device, x.dtype)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _dataset(images: ImageSet) -> Dataset:
    nbytes = len(images) * int(np.prod(images.spec.shape)) * 4
    if nbytes <= IN_MEMORY_BYTES:
        x, y = images.arrays()
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return images


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a loader."""
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return (correct / n if n else float("nan")), (loss_sum / n if n else float("nan"))


def load_split(dataset: str, data: str | Path | None, spec) -> Split:
    if data is not None:
        return folder_split(data, spec)
    if dataset == "digits":
        return digits_split(spec)
    raise DatasetError(f"unknown dataset {dataset!r}; use --dataset digits or --data DIR")


def train(
    name: str,
    *,
    out: str | Path,
    dataset: str = "digits",
    data: str | Path | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    weights: str = "random",
    device: str = "auto",
    augment: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train (or fine-tune from ``weights``) and write a checkpoint; returns the held-out metrics."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs and batch size must be >= 1 and lr > 0")
    started = time.perf_counter()
    loaded = load_model(name, weights=weights, seed=seed)
    split = load_split(dataset, data, loaded.input_spec)
    classes = list(split.classes)
    model = replace_head(loaded.model, len(classes))
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model.to(dev)

    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(_dataset(split.train), batch_size=batch_size, shuffle=True, generator=shuffle)
    heldout_loader = DataLoader(_dataset(split.heldout), batch_size=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * len(train_loader), pct_start=0.2
    )

    bar = tqdm(
        total=epochs * len(train_loader),
        desc=f"train {name}",
        unit="step",
        disable=not progress,
        mininterval=0.5,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    heldout_acc = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            if augment:
                x = random_affine(x, shuffle)
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update()
        heldout_acc, _ = evaluate(model, heldout_loader, dev)
        bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.4f}", heldout=f"{heldout_acc:.2%}")
    bar.close()

    train_loss, train_acc = loss_sum / seen, correct / seen
    metrics = {"heldout_accuracy": heldout_acc, "train_accuracy": train_acc, "train_loss": train_loss}
    described = split.describe()
    model.cpu().eval()
    path = save_checkpoint(
        out,
        model,
        name=loaded.name,
        num_classes=len(classes),
        labels=classes,
        input_spec=loaded.input_spec,
        dataset=described,
        metrics=metrics,
        epochs=epochs,
        hyperparameters={
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "optimizer": "AdamW",
            "schedule": "OneCycleLR",
            "augment": augment,
        },
        initial_weights={k: v for k, v in loaded.weights.items() if k != "trained"},
    )
    return TrainResult(
        path, heldout_acc, train_acc, train_loss, epochs, time.perf_counter() - started, described
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    p.add_argument("model", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--dataset", default="digits", help="bundled dataset (default: digits)")
    p.add_argument("--data", type=Path, help="train or fine-tune on this ImageFolder tree instead")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="random", help="initial weights: random, imagenet or a checkpoint")
    p.add_argument("--no-augment", action="store_true", help="train without random affine augmentation")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = train(
            args.model,
            out=args.out,
            dataset=args.dataset,
            data=args.data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            weights=args.weights,
            device=args.device,
            augment=not args.no_augment,
            progress=not args.no_progress,
        )
    except (UnknownModelError, WeightsError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.model}: held-out accuracy {result.heldout_accuracy:.2%} "
        f"({result.dataset['heldout_size']} images of {result.dataset['name']}), "
        f"train accuracy {result.train_accuracy:.2%}, {result.seconds:.1f} s -> {result.checkpoint}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
