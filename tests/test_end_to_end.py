"""The shipped smoke search on the real CIFAR-10 archive, through the command line."""

import csv
import io
import subprocess
import sys

import pytest

from conftest import SHARED_ARCHIVE, requires_cifar_archive

pytestmark = [pytest.mark.slow, requires_cifar_archive]


def test_smoke_search_on_cifar10(tmp_path):
    command = [
        sys.executable, "-m", "gansearch.cli", "run", "search_spaces/smoke.yaml",
        "--data", str(SHARED_ARCHIVE), "--storage", str(tmp_path), "--num-samples", "3",
        "--max-epochs", "2", "--grace-period", "1",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in run.stdout
    assert "#/experiments/" in run.stdout
    assert "workflowType=machine_learning" in run.stdout

    listing = subprocess.run(
        [sys.executable, "-m", "gansearch.cli", "trials", str(tmp_path / "smoke"), "--format", "csv"],
        capture_output=True, text=True, timeout=300,
    )
    rows = list(csv.DictReader(io.StringIO(listing.stdout)))
    assert len(rows) == 3
    assert all(float(row["best_fid_proxy"]) > 0 for row in rows)
    assert float(rows[0]["best_fid_proxy"]) <= float(rows[-1]["best_fid_proxy"])


def test_fid_proxy_rises_with_disturbance_strength():
    """The fast form of the validation benchmark: 1,000 test images, four strengths each.

    At N=1000 the finite-sample bias lifts the train-test distance to about 0.2, near the mildest
    strength of two disturbances, so this test starts at the second strength. The benchmark checks
    all five strengths on the full test split, where the train-test distance is about 0.02.
    """
    import torch

    from gansearch.data import load_split
    from gansearch.metrics.disturbances import DISTURBANCES
    from gansearch.metrics.proxy import FIDProxy

    scorer = FIDProxy(str(SHARED_ARCHIVE), split="train", n_samples=1000)
    test = torch.from_numpy(load_split(SHARED_ARCHIVE, "test").images[::10])
    floor = scorer.score_images(test).fid_proxy

    weakest = []
    for name, (disturb, strengths) in DISTURBANCES.items():
        values = [scorer.score_images(disturb(test, strength, 0)).fid_proxy for strength in strengths[1:5]]
        assert all(b > a for a, b in zip(values, values[1:])), f"{name}: {values}"
        weakest.append(values[0])
    assert floor < 0.5 * min(weakest), f"train-test {floor:.3f} is not well below the weakest disturbance {min(weakest):.3f}"
