"""The plain-PyTorch GAN training loop, runnable with or without Ray.

One iteration trains D ``n_disc`` times, each on a fresh real batch (target ``1 - label_smoothing``)
and a fresh fake batch (target 0), then trains G once with the non-saturating loss, so that D labels
its fakes real. An epoch is one pass over the real training images.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from gansearch.data import DeviceBatches
from gansearch.models import EMA, Discriminator, Generator, init_dcgan_weights

logger = logging.getLogger(__name__)

FIXED_NOISE_SEED = 1234  # one noise batch shared by every trial, for sample grids and metrics
AMP_MODES = ("off", "bf16", "fp16")


@dataclass(frozen=True)
class GANConfig:
    """Settings of one GAN training run; the defaults are the DCGAN paper's."""

    lr_g: float = 2e-4  # Adam learning rate of G
    lr_d: float = 2e-4  # Adam learning rate of D
    beta1: float = 0.5  # Adam first-moment decay, for both networks
    beta2: float = 0.999  # Adam second-moment decay, for both networks
    batch_size: int = 128  # real images per D step; fakes per D or G step
    z_dim: int = 100  # dimension of the noise z ~ N(0, I)
    g_width: int = 64  # G's channel count at 16x16 (DCGAN's ngf)
    d_width: int = 64  # D's channel count at 16x16 (DCGAN's ndf)
    n_disc: int = 1  # D steps per G step
    label_smoothing: float = 0.0  # real target is 1 - label_smoothing (one-sided smoothing)
    ema: float = 0.0  # decay of the averaged copy of G; 0 disables it
    seed: int = 0  # seeds weights, noise and data order
    amp: str = "off"  # mixed precision on CUDA: off, bf16 or fp16 (ignored on the CPU)

    def __post_init__(self) -> None:
        checks = [
            ("lr_g", self.lr_g > 0, "must be positive"),
            ("lr_d", self.lr_d > 0, "must be positive"),
            ("beta1", 0 <= self.beta1 < 1, "must lie in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "must lie in [0, 1)"),
            ("batch_size", self.batch_size >= 2, "must be at least 2 (BatchNorm needs a batch)"),
            ("z_dim", self.z_dim >= 1, "must be at least 1"),
            ("g_width", self.g_width >= 1, "must be at least 1"),
            ("d_width", self.d_width >= 1, "must be at least 1"),
            ("n_disc", self.n_disc >= 1, "must be at least 1"),
            ("label_smoothing", 0 <= self.label_smoothing < 0.5, "must lie in [0, 0.5)"),
            ("ema", self.ema == 0 or 0 < self.ema < 1, "must be 0 (off) or lie in (0, 1)"),
            ("amp", self.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
        ]
        for name, valid, rule in checks:
            if not valid:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: it {rule}")

    @classmethod
    def from_dict(cls, values: dict) -> "GANConfig":
        """Build a config from a dict, ignoring keys that are not GAN settings (Tune adds its own)."""
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochStats:
    """Means over one epoch's D steps (losses and D outputs) and its throughput."""

    d_loss: float
    g_loss: float
    d_real: float  # mean D(x) on real batches
    d_fake: float  # mean D(G(z)) on fake batches, seen by D before its update
    images_per_s: float  # real images consumed per second
    g_steps: int = 1  # G steps this epoch; 0 when n_disc exceeds the batches left, and g_loss is NaN

    @property
    def finite(self) -> bool:
        values = [self.d_loss, self.d_real, self.d_fake] + ([self.g_loss] if self.g_steps else [])
        return all(math.isfinite(value) for value in values)


def fixed_noise(count: int, z_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return the noise batch shared by every trial: drawn on the CPU so all devices see the same z."""
    generator = torch.Generator().manual_seed(FIXED_NOISE_SEED)
    return torch.randn(count, z_dim, generator=generator).to(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class GANTrainer:
    """Holds G, D, their Adam optimizers, the EMA copy and the data order for one training run."""

    def __init__(self, config: GANConfig, train_images: np.ndarray, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        seed_everything(config.seed)

        self.G = Generator(config.z_dim, config.g_width).to(self.device)
        self.D = Discriminator(config.d_width).to(self.device)
        self.G.apply(init_dcgan_weights)
        self.D.apply(init_dcgan_weights)
        self.G_ema = EMA(self.G, config.ema) if config.ema > 0 else None

        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas)

        self.batches = DeviceBatches(train_images, config.batch_size, self.device, seed=config.seed)
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.epoch = 0
        self.d_steps = 0  # D steps since the start; counts across epochs so n_disc spans epoch ends

        self.amp_dtype = self._amp_dtype(config.amp)
        use_scaler = self.amp_dtype == torch.float16
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp == "off" or self.device.type != "cuda":
            return None
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def _sample_z(self) -> torch.Tensor:
        return torch.randn(
            self.config.batch_size, self.config.z_dim, device=self.device, generator=self.noise
        )

    @property
    def sampler(self) -> Generator:
        """The generator that metrics and sample grids use: the EMA copy when there is one."""
        return self.G_ema.model if self.G_ema is not None else self.G

    def d_step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Train D on one real and one fake batch; return the loss and the mean D(x) and D(G(z))."""
        with torch.no_grad(), self._autocast():
            fake = self.G(self._sample_z())

        with self._autocast():
            real_logits = self.D(real)
            fake_logits = self.D(fake)
            real_target = torch.full_like(real_logits, 1.0 - self.config.label_smoothing)
            loss = F.binary_cross_entropy_with_logits(real_logits, real_target) + \
                F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        return loss.detach(), torch.sigmoid(real_logits.detach()).mean(), torch.sigmoid(fake_logits.detach()).mean()

    def g_step(self) -> torch.Tensor:
        """Train G with the non-saturating loss -log D(G(z)); return that loss."""
        with self._autocast():
            fake_logits = self.D(self.G(self._sample_z()))
            loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        # D's gradients from this step are discarded by the next D step's zero_grad.
        return loss.detach()

    def train_epoch(self) -> EpochStats:
        """Run one pass over the real images and return the epoch's means and throughput."""
        self.G.train()
        self.D.train()
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)  # d_loss, d_real, d_fake, g_loss
        d_steps = g_steps = 0
        started = time.perf_counter()

        for real in self.batches.epoch():
            d_loss, d_real, d_fake = self.d_step(real)
            totals[:3] += torch.stack([d_loss, d_real, d_fake]).double()
            d_steps += 1
            self.d_steps += 1

            if self.d_steps % self.config.n_disc == 0:
                totals[3] += self.g_step().double()
                g_steps += 1
                if self.G_ema is not None:
                    self.G_ema.update(self.G)

        means = totals.cpu().tolist()  # the only device sync of the epoch
        seconds = time.perf_counter() - started
        self.epoch += 1
        return EpochStats(
            d_loss=means[0] / max(d_steps, 1),
            d_real=means[1] / max(d_steps, 1),
            d_fake=means[2] / max(d_steps, 1),
            g_loss=means[3] / g_steps if g_steps else math.nan,
            images_per_s=d_steps * self.config.batch_size / seconds,
            g_steps=g_steps,
        )

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Return images in [-1, 1] from the sampling generator in eval mode, for the given noise."""
        sampler = self.sampler
        was_training = sampler.training
        sampler.eval()
        try:
            return sampler(z.to(self.device)).float()
        finally:
            sampler.train(was_training)

    def state_dict(self) -> dict:
        """Return everything needed to continue bit-exactly: weights, optimizers, RNG states, data order."""
        state = {
            "epoch": self.epoch,
            "d_steps": self.d_steps,
            "config": self.config.to_dict(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "data": self.batches.state_dict(),
            "noise_rng": self.noise.get_state(),
            "rng": capture_rng_state(),
        }
        if self.G_ema is not None:
            state["G_ema"] = self.G_ema.model.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        if self.G_ema is not None:
            self.G_ema.model.load_state_dict(state["G_ema"])
        self.batches.load_state_dict(state["data"])
        self.noise.set_state(state["noise_rng"])
        restore_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.d_steps = int(state.get("d_steps", 0))


def capture_rng_state() -> dict:
    """Return torch, CUDA, numpy and Python RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": _python_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((
        "MT19937",
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_tensor(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_tensor(state: dict) -> tuple:
    return state["version"], tuple(int(value) for value in state["internal"].tolist()), state["gauss"]
