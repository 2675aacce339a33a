"""Feature extraction and the on-disk cache of real-image feature statistics.

Real statistics are computed once per (data set, split, sample count, feature network) and stored
as ``<cache>/stats/<key>.npz``. The key hashes all four, so changing any of them computes new
statistics. Writers hold a file lock and rename a finished temporary file into place, so trials
that start together compute the statistics once, and a crash never leaves a partial file behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from gansearch.data import default_cache_dir, load_split, source_fingerprint, to_signed_unit
from gansearch.metrics.feature_net import FeatureNet
from gansearch.metrics.frechet import GaussianStats, MetricError, StatsAccumulator
from gansearch.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

STATS_FORMAT_VERSION = 1
REAL_SAMPLE_SEED = 0  # fixes which real images form a sample of a given size


@dataclass(frozen=True)
class RealReference:
    """Features of ``count`` real images and their Gaussian statistics."""

    features: np.ndarray
    stats: GaussianStats
    key: str
    from_cache: bool = False

    @property
    def count(self) -> int:
        return self.stats.count


@torch.no_grad()
def extract_features(
    network: FeatureNet,
    images: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> np.ndarray:
    """Return float32 features of uint8 images of shape (N, 3, 32, 32)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise MetricError(f"expected uint8 images of shape (N, 3, 32, 32), got {tuple(images.shape)}")

    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        chunks.append(network.features(to_signed_unit(batch.to(device))).float().cpu())
    return torch.cat(chunks).numpy()


def reference_key(source: str | os.PathLike, split: str, count: int, network_sha256: str) -> str:
    parts = [
        f"v{STATS_FORMAT_VERSION}",
        source_fingerprint(source, split),
        split,
        str(count),
        f"seed{REAL_SAMPLE_SEED}",
        network_sha256,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def load_reference(
    source: str | os.PathLike,
    split: str,
    count: int,
    network: FeatureNet,
    network_sha256: str,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> RealReference:
    """Return features and statistics of ``count`` real images, from the cache when it is valid."""
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = reference_key(source, split, count, network_sha256)
    cache_file = cache_root / "stats" / f"{key}.npz"
    cache_file.parent.mkdir(parents=True, exist_ok=True)

    with FileLock(str(cache_file) + ".lock", timeout=3600):
        reference = _read_reference(cache_file, key, count)
        if reference is not None:
            return reference

        images = sample_real_images(source, split, count, cache_dir=cache_dir)
        logger.info("computing real feature statistics of %d %s images into %s", count, split, cache_file)
        features = extract_features(network, images, device=device)
        reference = reference_from_features(features, key)
        _write_reference(cache_file, reference)
        return reference


def sample_real_images(
    source: str | os.PathLike, split: str, count: int, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """Return ``count`` real images drawn without replacement by a fixed seed."""
    image_set = load_split(source, split, cache_dir=cache_dir)
    if count > len(image_set):
        raise MetricError(
            f"n_samples {count} is larger than the {len(image_set)} real images in the {split} split "
            f"of {source}; lower n_samples to at most {len(image_set)}"
        )
    if count < 2:
        raise MetricError(f"n_samples must be at least 2, got {count}")
    rows = np.random.default_rng(REAL_SAMPLE_SEED).permutation(len(image_set))[:count]
    return image_set.images[np.sort(rows)]


def reference_from_features(features: np.ndarray, key: str = "") -> RealReference:
    accumulator = StatsAccumulator(features.shape[1])
    accumulator.update(features)
    return RealReference(features=features.astype(np.float32), stats=accumulator.finalize(), key=key)


def _read_reference(cache_file: Path, key: str, count: int) -> RealReference | None:
    """Return the cached reference, or None when it is missing, truncated, corrupt or foreign."""
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as archive:
            stored_key = str(archive["key"])
            features = archive["features"]
            mean = archive["mean"]
            cov = archive["cov"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        logger.warning("real statistics cache %s is unreadable (%s); computing it again", cache_file, error)
        return None

    dim = features.shape[1] if features.ndim == 2 else -1
    consistent = (
        stored_key == key
        and features.shape[0] == count
        and mean.shape == (dim,)
        and cov.shape == (dim, dim)
        and np.isfinite(cov).all()
    )
    if not consistent:
        logger.warning("real statistics cache %s does not match its key; computing it again", cache_file)
        return None
    return RealReference(features=features, stats=GaussianStats(mean, cov, count), key=key, from_cache=True)


def _write_reference(cache_file: Path, reference: RealReference) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        key=np.array(reference.key),
        features=reference.features,
        mean=reference.stats.mean,
        cov=reference.stats.cov,
    )
    atomic_write_bytes(cache_file, buffer.getvalue())
