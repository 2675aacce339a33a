"""The standard Inception-v3 FID through torch-fidelity, for users who have the weights file.

The weights cannot be fetched here at run time, so the user passes the file that torch-fidelity
downloads on machines with internet access (``weights-inception-2015-12-05-6726825d.pth``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "GANSEARCH_INCEPTION_WEIGHTS"
WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_HINT = (
    f"download {WEIGHTS_NAME} from the torch-fidelity v0.2.0 release on a machine with internet access "
    f"(or run torch-fidelity once there and copy it from ~/.cache/torch/hub/checkpoints/), then pass "
    f"--inception-weights FILE or set {WEIGHTS_ENV}"
)


class StandardFIDUnavailable(RuntimeError):
    """No Inception weights file, or torch-fidelity is not installed."""


def inception_weights_path(explicit: str | os.PathLike | None) -> Path | None:
    """Return the Inception weights file from the argument or the environment, None when neither is set.

    Raises StandardFIDUnavailable, with how to get the file, when the named file does not exist.
    """
    candidate = explicit or os.environ.get(WEIGHTS_ENV)
    if not candidate:
        return None
    path = Path(candidate).expanduser()
    if not path.is_file():
        raise StandardFIDUnavailable(f"Inception-v3 weights file {str(path)!r} not found; {WEIGHTS_HINT}")
    return path


class _UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[index]))


def standard_fid(
    images1: np.ndarray, images2: np.ndarray, weights: str | os.PathLike, device: torch.device | str = "cpu"
) -> float:
    """Return the standard FID between two sets of uint8 (N, 3, H, W) images, via torch-fidelity."""
    try:
        import torch_fidelity
    except ImportError as error:
        raise StandardFIDUnavailable(
            "standard FID needs torch-fidelity: pip install 'gansearch[fid]'"
        ) from error

    metrics = torch_fidelity.calculate_metrics(
        input1=_UInt8Images(images1),
        input2=_UInt8Images(images2),
        fid=True,
        cuda=torch.device(device).type == "cuda",
        feature_extractor_weights_path=str(weights),
        cache=False,
        verbose=False,
        batch_size=64,
    )
    return float(metrics["frechet_inception_distance"])
