"""The scorer that trials call each epoch: ``fid_proxy`` and ``kid_proxy`` of a generator.

Both compare the feature network's activations on generated images with those on real CIFAR-10
images. ``fid_proxy`` is the Fréchet distance between the two Gaussian fits. ``kid_proxy`` is the
mean unbiased MMD^2 over subsets, which has no bias in the sample count and so suits small N.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gansearch.data import to_signed_unit, to_uint8
from gansearch.metrics.feature_net import load_feature_net
from gansearch.metrics.frechet import MetricError, StatsAccumulator, frechet_distance, kernel_inception_distance
from gansearch.metrics.reference import RealReference, extract_features, load_reference

logger = logging.getLogger(__name__)

SCORE_NOISE_SEED = 2024  # every trial is scored on the same z
DEFAULT_N_GPU = 5000
DEFAULT_N_CPU = 1000
KID_SUBSETS = 50
KID_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class ProxyScore:
    fid_proxy: float
    kid_proxy: float
    kid_proxy_std: float
    n_samples: int

    def as_metrics(self) -> dict[str, float]:
        return {"fid_proxy": self.fid_proxy, "kid_proxy": self.kid_proxy}


def default_n_samples(device: torch.device | str) -> int:
    return DEFAULT_N_GPU if torch.device(device).type == "cuda" else DEFAULT_N_CPU


class FIDProxy:
    """Scores generators and image sets against cached real statistics of one data split.

    The real statistics are loaded (or computed and cached) on construction, so a trial pays for
    them once, and trials that start together compute them once between them.
    """

    def __init__(
        self,
        data: str | os.PathLike,
        split: str = "train",
        n_samples: int | None = None,
        device: torch.device | str = "cpu",
        feature_weights: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 500,
    ):
        self.device = torch.device(device)
        self.n_samples = n_samples if n_samples is not None else default_n_samples(self.device)
        if self.n_samples < 2:
            raise MetricError(f"n_samples must be at least 2, got {self.n_samples}")
        self.batch_size = batch_size
        self.network, self.network_sha256 = load_feature_net(feature_weights, self.device)
        self.reference: RealReference = load_reference(
            data, split, self.n_samples, self.network, self.network_sha256, self.device, cache_dir
        )

    @torch.no_grad()
    def score_generator(self, generator: nn.Module, z_dim: int) -> ProxyScore:
        """Score ``generator`` in eval mode on ``n_samples`` images from the fixed scoring noise."""
        noise = torch.Generator().manual_seed(SCORE_NOISE_SEED)
        was_training = generator.training
        generator.eval()
        try:
            chunks = []
            for start in range(0, self.n_samples, self.batch_size):
                count = min(self.batch_size, self.n_samples - start)
                z = torch.randn(count, z_dim, generator=noise).to(self.device)
                output = generator(z).float()
                if not torch.isfinite(output).all():
                    # A diverged G; quantising would turn NaN into black pixels and a finite score.
                    return ProxyScore(float("inf"), float("inf"), 0.0, self.n_samples)
                images = to_uint8(output)
                # Generated images are quantised to uint8 first, exactly as real JPEG-decoded images are.
                chunks.append(self.network.features(to_signed_unit(images)).float().cpu())
        finally:
            generator.train(was_training)
        return self.score_features(torch.cat(chunks).numpy())

    def score_images(self, images: np.ndarray | torch.Tensor) -> ProxyScore:
        """Score uint8 images of shape (N, 3, 32, 32); N must be at least 2."""
        if len(images) < 2:
            raise MetricError(f"scoring needs at least 2 images, got {len(images)}")
        features = extract_features(self.network, images, self.device, self.batch_size)
        return self.score_features(features)

    def score_features(self, features: np.ndarray) -> ProxyScore:
        accumulator = StatsAccumulator(features.shape[1])
        accumulator.update(features)
        stats = accumulator.finalize()
        if not (np.isfinite(stats.mean).all() and np.isfinite(stats.cov).all()):
            # Non-finite features: infinity keeps the value comparable and the worst.
            return ProxyScore(float("inf"), float("inf"), 0.0, len(features))

        fid = frechet_distance(stats, self.reference.stats)
        kid, kid_std = kernel_inception_distance(
            features, self.reference.features, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, device=self.device
        )
        return ProxyScore(fid_proxy=fid, kid_proxy=kid, kid_proxy_std=kid_std, n_samples=len(features))

