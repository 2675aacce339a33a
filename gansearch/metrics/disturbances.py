"""Image disturbances of increasing strength, for checking that ``fid_proxy`` behaves like FID.

Heusel et al. (2017) validated FID by disturbing real images with Gaussian noise, Gaussian blur,
black rectangles, swirl, salt-and-pepper noise and an admixture of images from another data set,
and showed that the distance rises with the strength of each. These functions reproduce those
disturbances on uint8 image batches of shape (N, 3, 32, 32); each is deterministic given its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

Disturbance = Callable[[torch.Tensor, float, int], torch.Tensor]


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


def gaussian_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Add N(0, sigma^2) noise per pixel, sigma in units of the full [0, 1] pixel range."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return _to_uint8(_to_float(images) + sigma * noise)


def gaussian_blur(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Blur with a Gaussian kernel of standard deviation ``sigma`` pixels."""
    kernel = 2 * math.ceil(3 * sigma) + 1
    return tv_gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def black_rectangles(images: torch.Tensor, size: float, seed: int = 0, count: int = 5) -> torch.Tensor:
    """Paint ``count`` black squares of side ``size`` (a fraction of the image side) at random places."""
    generator = torch.Generator().manual_seed(seed)
    n, _, height, width = images.shape
    side = max(1, round(size * width))
    out = images.clone()
    tops = torch.randint(0, height - side + 1, (n, count), generator=generator)
    lefts = torch.randint(0, width - side + 1, (n, count), generator=generator)
    rows = torch.arange(height).view(1, 1, height, 1)
    cols = torch.arange(width).view(1, 1, 1, width)
    mask = torch.zeros(n, 1, height, width, dtype=torch.bool)
    for k in range(count):
        top = tops[:, k].view(n, 1, 1, 1)
        left = lefts[:, k].view(n, 1, 1, 1)
        mask |= (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return out.masked_fill(mask.expand_as(out), 0)


def swirl(images: torch.Tensor, strength: float, seed: int = 0, radius: float = 16.0) -> torch.Tensor:
    """Swirl around the image centre: rotation angle ``strength * exp(-r / (radius / ln 2))``.

    This is scikit-image's swirl mapping, with a random centre jitter of up to two pixels per image.
    """
    generator = torch.Generator().manual_seed(seed)
    n, _, height, width = images.shape
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2]) + torch.randint(-2, 3, (n, 2), generator=generator)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    dx = xs.unsqueeze(0) - centre[:, 0].view(n, 1, 1)
    dy = ys.unsqueeze(0) - centre[:, 1].view(n, 1, 1)
    rho = torch.sqrt(dx**2 + dy**2)
    theta = strength * torch.exp(-rho / (radius / math.log(2))) + torch.atan2(dy, dx)
    source_x = centre[:, 0].view(n, 1, 1) + rho * torch.cos(theta)
    source_y = centre[:, 1].view(n, 1, 1) + rho * torch.sin(theta)
    grid = torch.stack([source_x / (width - 1) * 2 - 1, source_y / (height - 1) * 2 - 1], dim=-1)
    warped = F.grid_sample(_to_float(images), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return _to_uint8(warped)


def salt_and_pepper(images: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Set a ``fraction`` of pixels (all three channels) to black or white with equal odds."""
    generator = torch.Generator().manual_seed(seed)
    n, _, height, width = images.shape
    hit = torch.rand(n, 1, height, width, generator=generator) < fraction
    white = torch.rand(n, 1, height, width, generator=generator) < 0.5
    out = images.clone()
    out = out.masked_fill((hit & white).expand_as(out), 255)
    return out.masked_fill((hit & ~white).expand_as(out), 0)


def other_distribution(count: int, seed: int = 0) -> torch.Tensor:
    """Return ``count`` images from a distribution unlike CIFAR-10: smooth random colour fields.

    Each image is 4x4 uniform colour noise upsampled bicubically to 32x32, plus fine texture noise.
    The FID paper mixed in ImageNet images; no second natural-image set ships with gansearch.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    texture = 0.08 * torch.randn(count, 3, 32, 32, generator=generator)
    return _to_uint8(smooth + texture)


def mix_other(images: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Replace a ``fraction`` of the images, chosen at random, by images of ``other_distribution``."""
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    replaced = torch.randperm(n, generator=generator)[: round(fraction * n)]
    out = images.clone()
    out[replaced] = other_distribution(len(replaced), seed=seed + 1)
    return out


# Strengths from mild to severe; the first of each is the "weakest disturbance".
DISTURBANCES: dict[str, tuple[Disturbance, tuple[float, ...]]] = {
    "gaussian_noise": (gaussian_noise, (0.05, 0.1, 0.2, 0.3, 0.4)),
    "gaussian_blur": (gaussian_blur, (0.5, 1.0, 1.5, 2.0, 3.0)),
    "black_rectangles": (black_rectangles, (0.1, 0.2, 0.3, 0.4, 0.5)),
    "swirl": (swirl, (1.0, 2.0, 3.0, 4.0, 6.0)),
    "salt_and_pepper": (salt_and_pepper, (0.01, 0.03, 0.06, 0.1, 0.2)),
    "mix_other": (mix_other, (0.1, 0.25, 0.5, 0.75, 1.0)),
}


def disturbance_table(scorer, images: torch.Tensor, seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """Return, for every disturbance, (strength, fid_proxy) pairs from weakest to strongest."""
    table = {}
    for name, (disturb, strengths) in DISTURBANCES.items():
        table[name] = [(strength, scorer.score_images(disturb(images, strength, seed)).fid_proxy) for strength in strengths]
    return table
