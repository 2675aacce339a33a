"""Image grids from any checkpoint's generator (``gansearch sample``)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from gansearch.checkpoint import load_generator
from gansearch.errors import UsageError
from gansearch.storage import atomic_write_bytes


def sample_grid(checkpoint: str | os.PathLike, out: str | os.PathLike, n: int = 64, seed: int = 0) -> Path:
    """Write a PNG grid of ``n`` images from the checkpoint's generator (its EMA copy when present)."""
    from PIL import Image

    from gansearch.trainable import image_grid

    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {str(out)!r}")

    generator, metadata = load_generator(checkpoint)
    z = torch.randn(n, metadata["config"].z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = generator(z)

    buffer = io.BytesIO()
    Image.fromarray(image_grid(images, columns=min(8, n))).save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    return out
