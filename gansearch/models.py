"""The DCGAN generator and discriminator for 32x32 RGB images (Radford et al., 2016)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Generator(nn.Module):
    """Maps z of shape (N, z_dim) to images in [-1, 1] of shape (N, 3, 32, 32).

    Four transposed convolutions grow a 1x1 map to 4x4, 8x8, 16x16 and 32x32; every layer but the
    last has BatchNorm and ReLU, and the last has tanh. ``width`` is the channel count of the 16x16
    layer (the paper's ngf).
    """

    def __init__(self, z_dim: int = 100, width: int = 64):
        super().__init__()
        self.z_dim = z_dim
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, width * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width * 4),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class Discriminator(nn.Module):
    """Maps images of shape (N, 3, 32, 32) to one logit each; sigmoid(logit) is P(real).

    Strided convolutions halve the map from 32x32 to 4x4 with LeakyReLU(0.2), BatchNorm on all but
    the first, then a 4x4 convolution gives the logit. The sigmoid lives in the loss
    (``binary_cross_entropy_with_logits``), which is the numerically stable form.
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width * 2, width * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width * 4, 1, 4, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def init_dcgan_weights(module: nn.Module) -> None:
    """Apply the DCGAN paper's initialisation: N(0, 0.02) weights, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class EMA:
    """An exponential moving average of G's weights: ``ema = decay * ema + (1 - decay) * G``.

    BatchNorm running statistics are copied rather than averaged, as StyleGAN2-ADA does.
    """

    def __init__(self, generator: Generator, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, generator: Generator) -> None:
        for averaged, current in zip(self.model.parameters(), generator.parameters()):
            averaged.lerp_(current, 1.0 - self.decay)
        for averaged, current in zip(self.model.buffers(), generator.buffers()):
            averaged.copy_(current)
