"""The fixed feature network behind ``fid_proxy``: a compact CIFAR-10 classifier.

Its penultimate activations (``FEATURE_DIM`` numbers after global average pooling) play the role
that Inception-v3's pool features play in the standard FID. The shipped weights were trained by
``gansearch proxy train`` on the CIFAR-10 training split; ``weights/feature_net.json`` records the
command, the test accuracy and the sha256 that ``load_feature_net`` checks.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import zipfile
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from gansearch.storage import sha256_of_file

logger = logging.getLogger(__name__)

WIDTHS = (32, 64, 128, 256)
FEATURE_DIM = WIDTHS[-1]
NUM_CLASSES = 10
WEIGHTS_FILE = "feature_net.pt"
RECORD_FILE = "feature_net.json"

# Per-channel mean and standard deviation of the CIFAR-10 training split, in [0, 1] pixel units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class FeatureNetError(ValueError):
    """A missing, altered or incompatible feature-network weights file."""


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_block(channels, channels, pool=False), _conv_block(channels, channels, pool=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FeatureNet(nn.Module):
    """A small residual CIFAR-10 classifier in the style of the fast "ResNet-9" training recipes.

    ``forward`` takes images in [-1, 1] (the generator's range) and returns class logits;
    ``features`` returns the ``FEATURE_DIM``-dimensional penultimate activations.
    """

    def __init__(self, widths: tuple[int, ...] = WIDTHS, num_classes: int = NUM_CLASSES):
        super().__init__()
        stem, w1, w2, w3 = widths
        self.body = nn.Sequential(
            _conv_block(3, stem, pool=False),
            _conv_block(stem, w1, pool=True),  # 16x16
            Residual(w1),
            _conv_block(w1, w2, pool=True),  # 8x8
            _conv_block(w2, w3, pool=True),  # 4x4
            Residual(w3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, num_classes)

        # Inputs arrive in [-1, 1]; these buffers turn them into the normalised pixels it trains on.
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 0.5 / std)
        self.register_buffer("input_shift", (0.5 - mean) / std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * self.input_scale + self.input_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shipped_weights_path() -> Path:
    return Path(str(resources.files("gansearch.metrics") / "weights" / WEIGHTS_FILE))


def shipped_record() -> dict:
    """Return the training record of the shipped weights: sha256, test accuracy, command."""
    record_path = Path(str(resources.files("gansearch.metrics") / "weights" / RECORD_FILE))
    return json.loads(record_path.read_text())


def load_feature_net(
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> tuple[FeatureNet, str]:
    """Load the feature network in eval mode and return it with its weights' sha256.

    ``weights=None`` loads the shipped file and checks it against the recorded sha256; a user file
    is loaded as is, and its sha256 becomes part of every cache key computed with it.
    """
    path = Path(weights) if weights is not None else shipped_weights_path()
    if not path.is_file():
        raise FeatureNetError(
            f"feature network weights {str(path)!r} not found; "
            "reinstall gansearch or retrain them with 'gansearch proxy train --data PATH --out FILE'"
        )

    digest = sha256_of_file(path)
    if weights is None:
        expected = shipped_record()["sha256"]
        if digest != expected:
            raise FeatureNetError(
                f"feature network weights {str(path)!r} have sha256 {digest}, expected {expected}; "
                "the file is damaged or was replaced: reinstall gansearch"
            )

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        network = FeatureNet(widths=tuple(payload["widths"]))
        network.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError, EOFError, OSError, pickle.UnpicklingError, struct.error, zipfile.BadZipFile) as error:
        raise FeatureNetError(
            f"feature network weights {str(path)!r} are not a gansearch feature network: {error}"
        ) from error

    network.eval().requires_grad_(False)
    return network.to(device), digest
