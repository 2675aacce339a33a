"""Feature statistics, the Fréchet distance between Gaussians, and the kernel inception distance.

All arithmetic is in float64. The Fréchet distance between N(mu1, S1) and N(mu2, S2) is

    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)),

as defined for FID by Heusel et al. (2017). KID is the unbiased estimate of the squared maximum
mean discrepancy with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets, as defined
by Bińkowski et al. (2018).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Diagonal offset added to both covariances when their product is too close to singular, the same
# value as the reference FID implementation (pytorch-fid) uses.
SINGULAR_OFFSET = 1e-6


class MetricError(ValueError):
    """Statistics requested from too few samples or mismatched feature dimensions."""


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature distribution, estimated from ``count`` samples."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


class StatsAccumulator:
    """Accumulates feature sums batch by batch, so no more than one batch need be held at once."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise MetricError(f"expected features of shape (n, {self.dim}), got {features.shape}")

        self.count += features.shape[0]
        self._sum += features.sum(axis=0)
        self._outer += features.T @ features

    def finalize(self) -> GaussianStats:
        """Return the mean and the unbiased covariance; needs at least two samples."""
        if self.count < 2:
            raise MetricError(
                f"feature statistics need at least 2 samples for a covariance, got {self.count}"
            )
        mean = self._sum / self.count
        cov = (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return GaussianStats(mean=mean, cov=(cov + cov.T) / 2, count=self.count)


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    accumulator = StatsAccumulator(features.shape[1])
    accumulator.update(features)
    return accumulator.finalize()


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Return the symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Return tr((cov1 cov2)^(1/2)) through the symmetric form (S1^(1/2) S2 S1^(1/2))^(1/2).

    Both matrices have the same eigenvalues, but only the symmetric one can go through eigh, which
    returns real eigenvalues. Round-off can make a few slightly negative, so those are clipped to 0.
    """
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(stats1: GaussianStats, stats2: GaussianStats) -> float:
    """Return the Fréchet distance between two Gaussians; never complex, never NaN for finite input."""
    if stats1.mean.shape != stats2.mean.shape:
        raise MetricError(
            f"feature dimensions differ: {stats1.mean.shape[0]} and {stats2.mean.shape[0]}; "
            "both statistics must come from the same feature network"
        )
    for stats in (stats1, stats2):
        if not (np.isfinite(stats.mean).all() and np.isfinite(stats.cov).all()):
            raise MetricError("feature statistics contain NaN or infinite values")

    cov1, cov2 = stats1.cov, stats2.cov
    if _is_near_singular(cov1) or _is_near_singular(cov2):
        offset = np.eye(cov1.shape[0]) * SINGULAR_OFFSET
        cov1, cov2 = cov1 + offset, cov2 + offset

    diff = stats1.mean - stats2.mean
    distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * _trace_sqrt_product(cov1, cov2)
    # The exact value is non-negative; round-off can push identical inputs a hair below zero.
    return max(float(distance), 0.0)


def _is_near_singular(cov: np.ndarray) -> bool:
    eigenvalues = np.linalg.eigvalsh(cov)
    return bool(eigenvalues.min() <= SINGULAR_OFFSET * max(eigenvalues.max(), 1.0))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the cubic kernel (x.y / d + 1)^3 between the rows of ``x`` and ``y``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Return the unbiased squared MMD between samples ``x`` and ``y`` under the cubic kernel."""
    x, y = _as_float64(x), _as_float64(y, x.device if isinstance(x, torch.Tensor) else None)
    m, n = len(x), len(y)
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def _as_float64(values: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(values) if not isinstance(values, torch.Tensor) else values
    return tensor.to(device=device or tensor.device, dtype=torch.float64)


def kernel_inception_distance(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Return the mean and standard deviation of the unbiased MMD^2 over random subsets.

    Each subset draws ``subset_size`` rows without replacement from each feature set; when a set is
    smaller than that, the whole set is used. When both sets are that small, the standard deviation
    is 0 and does not measure the estimate's noise. The kernels are computed in float64 on ``device``
    (default: the device of ``features1``), because on a GPU this is the costliest step on the CPU.
    """
    x = _as_float64(features1, torch.device(device) if device is not None else None)
    y = _as_float64(features2, x.device)
    if x.shape[1] != y.shape[1]:
        raise MetricError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise MetricError(f"KID needs at least 2 samples in each set, got {len(x)} and {len(y)}")
    if subsets < 1:
        raise MetricError(f"KID needs at least 1 subset, got {subsets}")

    if size == len(x) and size == len(y):
        # Every subset would be both whole sets, so one computation gives the same mean.
        subsets = 1
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        rows1 = torch.from_numpy(rng.choice(len(x), size, replace=False)).to(x.device)
        rows2 = torch.from_numpy(rng.choice(len(y), size, replace=False)).to(x.device)
        values[index] = mmd2_unbiased(x[rows1], y[rows2])
    return float(values.mean()), float(values.std())
