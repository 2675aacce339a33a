"""``gansearch proxy score``: score a folder, an archive or a generator checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from gansearch.checkpoint import GENERATOR_FILE, STATE_FILE, load_generator
from gansearch.data import is_archive, load_images, to_uint8
from gansearch.errors import UsageError
from gansearch.metrics.proxy import SCORE_NOISE_SEED, FIDProxy, default_n_samples
from gansearch.metrics.reference import sample_real_images
from gansearch.metrics.standard_fid import WEIGHTS_HINT, inception_weights_path, standard_fid

logger = logging.getLogger(__name__)


def is_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return (path / GENERATOR_FILE).is_file() or (path / STATE_FILE).is_file()
    return path.suffix in {".pt", ".pth"}


@torch.no_grad()
def generate_images(checkpoint: Path, n: int, device: torch.device) -> np.ndarray:
    """Sample ``n`` uint8 images from a checkpoint's generator with the fixed scoring noise."""
    generator, metadata = load_generator(checkpoint, device)
    noise = torch.Generator().manual_seed(SCORE_NOISE_SEED)
    chunks = []
    for start in range(0, n, 500):
        z = torch.randn(min(500, n - start), metadata["config"].z_dim, generator=noise).to(device)
        chunks.append(to_uint8(generator(z).float()).cpu())
    return torch.cat(chunks).numpy()


def parse_device(device: str | None) -> torch.device:
    """Return the torch device for ``--device``: cuda when available by default, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is invalid: use cpu, cuda or cuda:N") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r} requested but PyTorch sees no CUDA GPU; use --device cpu")
    return parsed


def score_path(
    path: str | os.PathLike,
    data: str = "cifar10",
    n_samples: int | None = None,
    feature_weights: str | None = None,
    inception_weights: str | None = None,
    device: str | None = None,
) -> dict:
    """Return ``fid_proxy`` and ``kid_proxy`` of the images at ``path`` against CIFAR-10 training images.

    With Inception weights (argument or environment) it adds ``fid``, the standard FID.
    """
    path = Path(path).expanduser()
    torch_device = parse_device(device)
    if n_samples is not None and n_samples < 2:
        raise UsageError(f"--n must be at least 2, got {n_samples}")

    if is_checkpoint(path):
        count = n_samples or default_n_samples(torch_device)
        images = None
    elif path.is_dir() or is_archive(path):
        images = load_images(path)
        count = n_samples or len(images)
        if count > len(images):
            raise UsageError(f"--n {count} is larger than the {len(images)} images in {str(path)!r}")
        images = images[:count]
    else:
        raise UsageError(
            f"{str(path)!r} is not a folder or archive of images, nor a checkpoint (a .pt file or a folder with {GENERATOR_FILE})"
        )

    # Build the scorer first: a missing data set or a too-large n fails before any sampling.
    scorer = FIDProxy(data, split="train", n_samples=count, device=torch_device, feature_weights=feature_weights)
    if images is None:
        images = generate_images(path, count, torch_device)
    score = scorer.score_images(images)
    result = {
        "fid_proxy": score.fid_proxy,
        "kid_proxy": score.kid_proxy,
        "kid_proxy_std": score.kid_proxy_std,
        "n_samples": score.n_samples,
    }

    weights = inception_weights_path(inception_weights)
    if weights is None:
        logger.info("standard FID skipped: no Inception-v3 weights file; %s", WEIGHTS_HINT)
        return result
    real = sample_real_images(data, "train", count)
    result["fid"] = standard_fid(images, real, weights, torch_device)
    return result
