"""Training of the feature network on the CIFAR-10 training split (``gansearch proxy train``)."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gansearch.data import load_split, to_signed_unit
from gansearch.metrics.feature_net import WIDTHS, FeatureNet
from gansearch.storage import atomic_write_bytes, sha256_of_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureTrainingConfig:
    epochs: int = 14
    batch_size: int = 256
    lr: float = 0.2  # peak SGD learning rate of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply a random horizontal flip and a random 32x32 crop from a 4-pixel reflect-padded image."""
    n = images.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)

    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2,), generator=generator).tolist()
    # One offset per batch keeps this a cheap slice; over many batches every offset is drawn.
    return padded[:, :, dy : dy + 32, dx : dx + 32].contiguous()


@torch.no_grad()
def evaluate(network: FeatureNet, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Return the top-1 accuracy of ``network`` on uint8 images."""
    network.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = to_signed_unit(torch.from_numpy(images[start : start + batch_size]))
        predicted = network(batch).argmax(dim=1).numpy()
        correct += int((predicted == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train_feature_net(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: FeatureTrainingConfig = FeatureTrainingConfig(),
    subset: int | None = None,
) -> dict:
    """Train the feature network, write its weights atomically to ``out`` and return the record.

    The record (``out`` with a ``.json`` suffix) contains the sha256, the test accuracy and the
    settings, so the shipped weights carry their own provenance.
    """
    from gansearch.errors import UsageError

    if config.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {config.epochs}")
    train = load_split(data, "train", subset=subset)
    test = load_split(data, "test")
    if len(train) < config.batch_size:
        raise UsageError(
            f"the training split has {len(train)} images, fewer than one batch of {config.batch_size}; "
            "use a larger data set or --subset"
        )
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    network = FeatureNet(widths=WIDTHS).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        network.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=True,
    )
    steps_per_epoch = len(train) // config.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.25,
    )
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)

    started = time.monotonic()
    accuracy = math.nan
    for epoch in range(1, config.epochs + 1):
        network.train()
        order = torch.randperm(len(train), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = augment(to_signed_unit(images[index]), generator).to(memory_format=torch.channels_last)
            loss = F.cross_entropy(network(batch), labels[index], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

        accuracy = evaluate(network, test.images, test.labels)
        logger.info(
            "epoch %d/%d: loss %.3f, test accuracy %.4f, %.0f s elapsed",
            epoch, config.epochs, loss.item(), accuracy, time.monotonic() - started,
        )

    network = network.to(memory_format=torch.contiguous_format)
    buffer = io.BytesIO()
    torch.save({"widths": list(WIDTHS), "state_dict": network.state_dict()}, buffer)
    atomic_write_bytes(out, buffer.getvalue())

    record = {
        "sha256": sha256_of_file(out),
        "test_accuracy": accuracy,
        "train_images": len(train),
        "test_images": len(test),
        "widths": list(WIDTHS),
        "training": asdict(config),
        "train_seconds": round(time.monotonic() - started),
        "torch": torch.__version__,
        "command": f"gansearch proxy train --data {data} --out {out} --epochs {config.epochs}",
    }
    atomic_write_bytes(Path(out).with_suffix(".json"), json.dumps(record, indent=2).encode())
    return record
