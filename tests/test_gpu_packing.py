"""Fractional GPUs: with 0.5 GPU per trial and 2 logical GPUs, four trials run at once.

Ray accepts num_gpus on a machine without CUDA, so the packing is Ray's real scheduling. Each
trial then falls back to the CPU with one warning and records its device.
"""


import pytest
import yaml

from conftest import trial_results, trial_spans
from gansearch.search import prepare_search, run_search
from gansearch.spec import validate_document
from gansearch.tracking import TAG_ROLE

pytestmark = pytest.mark.slow
RAY_INIT_ARGS = {"num_cpus": 4, "num_gpus": 2}


def test_four_trials_share_two_gpus(ray_runtime, tmp_path, image_folder, random_feature_weights):
    spec = {
        "name": "packing",
        "train": {"batch_size": 16, "z_dim": 8, "g_width": 4, "d_width": 4},
        "search_space": {"lr_g": {"type": "loguniform", "low": 1e-5, "high": 1e-2}},
        "metrics": {"n_samples": 40, "feature_weights": str(random_feature_weights)},
        "scheduler": {"type": "fifo", "max_epochs": 2},
        "trials": {"num_samples": 4, "cpus": 1, "gpus": 0.5},
    }
    prepared = prepare_search(validate_document(spec, "test"), yaml.safe_dump(spec), data=str(image_folder), storage=str(tmp_path))
    outcome = run_search(prepared)

    for lines in trial_results(prepared.experiment_dir).values():
        assert {line["device"] for line in lines} == {"cpu"}
    spans = trial_spans(prepared.experiment_dir)
    assert len(spans) == 4
    latest_start = max(start for start, _ in spans)
    earliest_end = min(end for _, end in spans)
    assert latest_start < earliest_end, f"the four trials never ran at the same time: {sorted(spans)}"

    runs = outcome.store.client.search_runs([outcome.store.experiment_id])
    assert {r.data.tags.get("gansearch.device") for r in runs if r.data.tags.get(TAG_ROLE) == "trial"} == {"cpu"}
