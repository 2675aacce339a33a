"""The Ray Tune function trainable: one GAN trial, reporting metrics and a checkpoint every epoch."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gansearch.checkpoint import (
    GENERATOR_FILE,
    SAMPLES_FILE,
    STATE_FILE,
    load_checkpoint_state,
    save_generator,
    save_state,
)
from gansearch.data import load_split, to_uint8
from gansearch.metrics.proxy import FIDProxy
from gansearch.training import EpochStats, GANConfig, GANTrainer, fixed_noise

logger = logging.getLogger(__name__)

SETTINGS_KEY = "_gansearch"  # config entry holding the trial settings that are not searched
GRID_SIZE = 64


@dataclass(frozen=True)
class TrialSettings:
    """Fixed per-search settings every trial receives next to its GAN config."""

    data: str
    max_epochs: int
    subset: int | None = None
    n_samples: int | None = None
    metric_split: str = "train"
    feature_weights: str | None = None
    cache_dir: str | None = None
    image_every: int = 1
    saturation_epochs: int = 3
    d_real_min: float = 0.99
    d_fake_max: float = 0.01
    init_checkpoint: str | None = None  # checkpoint folder to start from when Tune has none (gansearch resume)

    @classmethod
    def from_config(cls, config: dict) -> "TrialSettings":
        return cls(**config[SETTINGS_KEY])

    def to_dict(self) -> dict:
        return asdict(self)


class DivergenceMonitor:
    """Flags a run as diverged on a non-finite loss or on D saturated for k epochs in a row."""

    def __init__(self, settings: TrialSettings, saturated_epochs: int = 0):
        self.settings = settings
        self.saturated_epochs = saturated_epochs

    def check(self, stats: EpochStats) -> str | None:
        """Return the reason the run diverged this epoch, or None."""
        if not stats.finite:
            return "non-finite loss"

        saturated = stats.d_real >= self.settings.d_real_min and stats.d_fake <= self.settings.d_fake_max
        self.saturated_epochs = self.saturated_epochs + 1 if saturated else 0
        if self.saturated_epochs >= self.settings.saturation_epochs:
            return (
                f"D saturated for {self.saturated_epochs} epochs "
                f"(D(x) {stats.d_real:.3f}, D(G(z)) {stats.d_fake:.4f})"
            )
        return None


def trial_device() -> torch.device:
    """Return the GPU that Ray assigned to this trial, else the CPU (warning once if Ray gave a GPU)."""
    import ray

    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        return torch.device("cpu")
    if torch.cuda.is_available():
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible one is ours.
        return torch.device("cuda", 0)
    warnings.warn(
        f"Ray assigned GPU {gpu_ids} to this trial but CUDA is not available to PyTorch; training on the CPU",
        RuntimeWarning,
        stacklevel=2,
    )
    return torch.device("cpu")


def train_gan(config: dict) -> None:
    """Train one GAN config for ``max_epochs`` epochs, reporting to Tune once per epoch.

    Resumes from ``ray.tune.get_checkpoint()`` when Tune restores or retries the trial.
    """
    import ray.tune

    # Ray's storage module logs every persisted checkpoint at INFO; once per epoch per trial is noise.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    settings = TrialSettings.from_config(config)
    gan_config = GANConfig.from_dict(config)
    resources = ray.tune.get_context().get_trial_resources().required_resources
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    device = trial_device()

    trainer, scorer = build_trial(gan_config, settings, device)
    monitor = DivergenceMonitor(settings)
    state = None
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint_state(Path(directory) / STATE_FILE)
    elif settings.init_checkpoint is not None:
        # A local folder or a URI (s3://, gs://): ray.tune.Checkpoint reads both.
        with ray.tune.Checkpoint(settings.init_checkpoint).as_directory() as directory:
            state = load_checkpoint_state(Path(directory) / STATE_FILE)
    if state is not None:
        trainer.load_state_dict(state)
        monitor.saturated_epochs = int(state.get("saturated_epochs", 0))
        logger.info("continuing the trial from epoch %d", trainer.epoch)

    run_epochs(trainer, scorer, monitor, settings, ray.tune.report)


def build_trial(gan_config: GANConfig, settings: TrialSettings, device: torch.device) -> tuple[GANTrainer, FIDProxy]:
    images = load_split(settings.data, "train", subset=settings.subset, cache_dir=settings.cache_dir).images
    trainer = GANTrainer(gan_config, images, device)
    scorer = FIDProxy(
        settings.data,
        split=settings.metric_split,
        n_samples=settings.n_samples,
        device=device,
        feature_weights=settings.feature_weights,
        cache_dir=settings.cache_dir,
    )
    return trainer, scorer


def run_epochs(trainer: GANTrainer, scorer: FIDProxy, monitor: DivergenceMonitor, settings: TrialSettings, report) -> None:
    """Train until ``max_epochs``, calling ``report(metrics, checkpoint=...)`` after every epoch.

    A diverged epoch is reported with ``diverged=1``, an infinite metric and no checkpoint, and then
    the trial ends. The search's searcher and scheduler discard such results.
    """
    from ray.tune import Checkpoint

    grid_noise = fixed_noise(GRID_SIZE, trainer.config.z_dim, trainer.device)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)

    import ray

    node_id = ray.get_runtime_context().get_node_id()
    while trainer.epoch < settings.max_epochs:
        stats = trainer.train_epoch()
        reason = monitor.check(stats)
        metrics = epoch_metrics(trainer, stats)
        metrics["node_id"] = node_id

        if reason is not None:
            logger.warning("trial diverged at epoch %d: %s", trainer.epoch, reason)
            metrics.update(fid_proxy=math.inf, kid_proxy=math.inf, diverged=1, end_reason=reason)
            report(metrics)
            return

        metrics.update(scorer.score_generator(trainer.sampler, trainer.config.z_dim).as_metrics())
        metrics.update(diverged=0, end_reason="", device=str(trainer.device))
        if trainer.device.type == "cuda":
            metrics["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20

        with tempfile.TemporaryDirectory(prefix="gansearch-ckpt-") as directory:
            write_checkpoint(Path(directory), trainer, monitor, metrics, grid_noise, settings)
            report(metrics, checkpoint=Checkpoint.from_directory(directory))


def epoch_metrics(trainer: GANTrainer, stats: EpochStats) -> dict:
    return {
        "epoch": trainer.epoch,
        "d_loss": stats.d_loss,
        "g_loss": stats.g_loss,
        "d_real": stats.d_real,
        "d_fake": stats.d_fake,
        "images_per_s": stats.images_per_s,
    }


def write_checkpoint(
    directory: Path,
    trainer: GANTrainer,
    monitor: DivergenceMonitor,
    metrics: dict,
    grid_noise: torch.Tensor,
    settings: TrialSettings,
) -> None:
    """Write the full training state, the sampling generator and, when due, the sample grid."""
    state = trainer.state_dict()
    state["saturated_epochs"] = monitor.saturated_epochs
    save_state(directory / STATE_FILE, state)
    save_generator(directory / GENERATOR_FILE, trainer)

    last_epoch = trainer.epoch == settings.max_epochs
    if trainer.epoch % settings.image_every == 0 or trainer.epoch == 1 or last_epoch:
        save_grid(trainer.generate(grid_noise), directory / SAMPLES_FILE)
    (directory / "metrics.json").write_text(json.dumps(metrics, default=float))


def image_grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> np.ndarray:
    """Arrange images in [-1, 1] of shape (N, 3, H, W) into one uint8 HxWx3 grid."""
    from torchvision.utils import make_grid

    grid = make_grid(to_uint8(images.cpu()), nrow=columns, padding=padding, pad_value=0)
    return grid.permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: Path) -> None:
    Image.fromarray(image_grid(images)).save(path, format="PNG")

