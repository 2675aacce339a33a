"""Shared fixtures: small image-folder data sets, random feature weights, one Ray runtime per module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"


def write_image_folder(root: Path, classes: int = 3, train_per_class: int = 24, test_per_class: int = 8, seed: int = 0) -> Path:
    """Write PNG images of colour-coded noise into root/{train,test}/class<k>/; return root."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                base = np.zeros((32, 32, 3))
                base[..., label % 3] = 180
                pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's decoded-data and statistics cache out of the user's home folder."""
    monkeypatch.setenv("GANSEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "tiny")


@pytest.fixture(scope="session")
def random_feature_weights(tmp_path_factory) -> Path:
    """Feature-network weights from a seeded random initialisation: fast, and valid for plumbing tests."""
    from gansearch.metrics.feature_net import WIDTHS, FeatureNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random_feature_net.pt"
    torch.save({"widths": list(WIDTHS), "state_dict": FeatureNet().state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def ray_runtime(request):
    """One local Ray runtime for a whole test module: ray.init costs several seconds.

    A module may set RAY_INIT_ARGS, for example to declare logical GPUs.
    """
    import ray

    arguments = {"num_cpus": 2, **getattr(request.module, "RAY_INIT_ARGS", {})}
    ray.init(include_dashboard=False, logging_level="WARNING", configure_logging=False, **arguments)
    yield ray
    ray.shutdown()


def trial_results(experiment_dir: Path) -> dict[Path, list[dict]]:
    """Return every trial folder's reported results, in the order Tune wrote them."""
    import json

    return {
        result_file.parent: [json.loads(line) for line in result_file.read_text().splitlines()]
        for result_file in Path(experiment_dir).glob("train_gan_*/result.json")
    }


def trial_spans(experiment_dir: Path) -> list[tuple[float, float]]:
    """Return (start of the first epoch, time of the last result) of each trial, in seconds."""
    return [
        (lines[0]["timestamp"] - lines[0]["time_this_iter_s"], lines[-1]["timestamp"])
        for lines in trial_results(experiment_dir).values()
    ]


requires_cifar_archive = pytest.mark.skipif(
    not SHARED_ARCHIVE.is_file(), reason=f"CIFAR-10 archive not found at {SHARED_ARCHIVE}"
)
