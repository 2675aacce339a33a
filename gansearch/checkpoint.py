"""Checkpoint files: the full training state and the generator alone, written atomically.

A trial checkpoint is a folder holding ``state.pt`` (everything ``GANTrainer`` needs to continue
bit-exactly), ``generator.pt`` (the sampling generator and its config, enough for
``gansearch sample``), ``samples.png`` when a grid was due, and ``metrics.json``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from gansearch.models import Generator
from gansearch.storage import atomic_write_bytes
from gansearch.training import GANConfig, GANTrainer

STATE_FILE = "state.pt"
GENERATOR_FILE = "generator.pt"
SAMPLES_FILE = "samples.png"
GENERATOR_FORMAT = "gansearch-generator-v1"
STATE_FORMAT = "gansearch-state-v1"


class CheckpointError(ValueError):
    """A missing, corrupt or foreign checkpoint file."""


def _save(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path, device: torch.device | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, struct.error) as error:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is corrupt or not a PyTorch checkpoint: {error}"
        ) from error
    if not isinstance(payload, dict) or not all(isinstance(key, str) for key in payload):
        raise CheckpointError(f"checkpoint file {str(path)!r} is not a gansearch checkpoint")
    return payload


def save_state(path: str | os.PathLike, state: dict) -> None:
    _save(Path(path), {"format": STATE_FORMAT, **state})


def load_checkpoint_state(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """Load a trainer state saved by ``save_state``; raise CheckpointError naming the file otherwise.

    Keep ``device`` on the CPU for ``GANTrainer.load_state_dict``: RNG states must be CPU tensors,
    and the model and optimizer loaders move their tensors to the trainer's device themselves.
    """
    state = _load(Path(path), device)
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is not a gansearch training state (format {state.get('format')!r})"
        )
    return state


def save_generator(path: str | os.PathLike, trainer: GANTrainer) -> None:
    """Write the sampling generator (the EMA copy when there is one) with its config and epoch."""
    weights = {name: tensor.cpu() for name, tensor in trainer.sampler.state_dict().items()}
    _save(
        Path(path),
        {
            "format": GENERATOR_FORMAT,
            "config": trainer.config.to_dict(),
            "epoch": trainer.epoch,
            "ema": trainer.G_ema is not None,
            "G": weights,
        },
    )


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[Generator, dict]:
    """Load a generator from ``generator.pt``, ``state.pt`` or a checkpoint folder, in eval mode.

    Returns the generator and the checkpoint's metadata (config, epoch, whether it is the EMA copy).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / GENERATOR_FILE, path / STATE_FILE]
        existing = [candidate for candidate in candidates if candidate.is_file()]
        if not existing:
            raise CheckpointError(f"checkpoint folder {str(path)!r} has neither {GENERATOR_FILE} nor {STATE_FILE}")
        path = existing[0]

    payload = _load(path, "cpu")
    try:
        if payload.get("format") == GENERATOR_FORMAT:
            weights, ema = payload["G"], bool(payload["ema"])
        elif payload.get("format") == STATE_FORMAT:
            ema = "G_ema" in payload
            weights = payload["G_ema"] if ema else payload["G"]
        else:
            raise CheckpointError(f"checkpoint file {str(path)!r} is not a gansearch checkpoint")
        config = GANConfig.from_dict(payload["config"])
        generator = Generator(config.z_dim, config.g_width)
        generator.load_state_dict(weights)
        metadata = {"config": config, "epoch": int(payload["epoch"]), "ema": ema}
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint file {str(path)!r} is damaged or incomplete: {error!r}") from error
    return generator.to(device).eval(), metadata
