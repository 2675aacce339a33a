"""Real searches on a tiny image folder: Ray Tune, Optuna, ASHA and MLflow together."""

import itertools
import json
from pathlib import Path

import pytest
import yaml

from conftest import trial_spans
from gansearch.cli import main
from gansearch.search import prepare_search, run_search
from gansearch.spec import validate_document
from gansearch.tracking import TAG_END, TAG_END_REASON, TAG_ROLE, TAG_TRIAL_ID, MLflowStore
from gansearch.trials import trial_table

pytestmark = pytest.mark.slow


def tiny_spec(**changes) -> dict:
    spec = {
        "name": "tiny",
        "train": {"batch_size": 16, "z_dim": 8, "g_width": 4, "d_width": 4},
        "search_space": {
            "lr_g": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
            "beta1": {"type": "uniform", "low": 0.0, "high": 0.9},
        },
        "metrics": {"n_samples": 40},
        "searcher": {"type": "optuna", "seed": 0},
        "scheduler": {"type": "asha", "max_epochs": 4, "grace_period": 1, "reduction_factor": 2},
        "trials": {"num_samples": 6, "max_concurrent": 2, "cpus": 1},
        "tracking": {"image_every": 1},
    }
    for dotted, value in changes.items():
        node = spec
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return spec


def run_tiny(tmp_path, image_folder, weights, spec_dict):
    spec_dict = {**spec_dict, "metrics": {**spec_dict["metrics"], "feature_weights": str(weights)}}
    spec = validate_document(spec_dict, "test spec")
    prepared = prepare_search(spec, yaml.safe_dump(spec_dict), data=str(image_folder), storage=str(tmp_path / "results"))
    outcome = run_search(prepared)
    return prepared, outcome.results, outcome.store


def child_runs(store: MLflowStore):
    runs = store.client.search_runs([store.experiment_id])
    parents = [run for run in runs if run.data.tags.get(TAG_ROLE) == "search"]
    children = [run for run in runs if run.data.tags.get(TAG_ROLE) == "trial"]
    return parents, children


def optuna_states(experiment_dir: Path) -> list[str]:
    """Return the state of every trial in the Optuna study that Tune saved with the search."""
    import ray.cloudpickle

    state_file = max(experiment_dir.glob("searcher-state-*.pkl"))
    with open(state_file, "rb") as handle:
        searcher_state = ray.cloudpickle.load(handle)
    return [trial.state.name for trial in searcher_state["_ot_study"].trials]


@pytest.fixture(scope="module")
def asha_search(ray_runtime, tmp_path_factory, image_folder, random_feature_weights):
    tmp_path = tmp_path_factory.mktemp("asha")
    return run_tiny(tmp_path, image_folder, random_feature_weights, tiny_spec())


def test_every_trial_recorded_in_mlflow(asha_search):
    prepared, results, store = asha_search
    parents, children = child_runs(store)

    assert len(parents) == 1
    assert len(children) == 6
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert [a.path for a in store.client.list_artifacts(parents[0].info.run_id)] == ["spec", "trials.csv"]
    for run in children:
        assert {"lr_g", "beta1", "batch_size", "g_width"} <= set(run.data.params)
        assert run.data.tags[TAG_END] in {"completed", "stopped early"}


def test_metric_history_per_epoch(asha_search):
    prepared, results, store = asha_search
    _, children = child_runs(store)
    table = trial_table(prepared.experiment_dir).set_index("trial_id")

    for run in children:
        epochs = table.loc[run.data.tags[TAG_TRIAL_ID], "epochs"]
        for metric in ("fid_proxy", "kid_proxy", "d_loss", "g_loss", "d_real", "d_fake", "images_per_s"):
            history = store.client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), metric


def test_sample_grid_logged_every_epoch(asha_search):
    prepared, results, store = asha_search
    _, children = child_runs(store)
    table = trial_table(prepared.experiment_dir).set_index("trial_id")

    for run in children:
        epochs = table.loc[run.data.tags[TAG_TRIAL_ID], "epochs"]
        images = [a.path for a in store.client.list_artifacts(run.info.run_id, "images")]
        pngs = [path for path in images if path.endswith(".png")]
        assert len(pngs) == epochs
        assert store.client.list_artifacts(run.info.run_id, "best_checkpoint")[0].path.endswith("generator.pt")


def test_asha_stopped_a_trial_early(asha_search):
    prepared, results, store = asha_search
    table = trial_table(prepared.experiment_dir)

    assert (table["status"] == "stopped early").sum() >= 1
    assert (table["status"] == "completed").sum() >= 1
    assert table["epochs"].min() < 4
    assert table["best_fid_proxy"].is_monotonic_increasing


def test_first_trial_is_dcgan_default(asha_search):
    prepared, results, store = asha_search
    configs = [json.loads(p.read_text()) for p in Path(prepared.experiment_dir).glob("train_gan_*/params.json")]
    defaults = [c for c in configs if c["lr_g"] == 2e-4 and c["beta1"] == 0.5]
    assert len(defaults) == 1


def test_trials_ran_concurrently(asha_search):
    prepared, results, store = asha_search
    spans = trial_spans(prepared.experiment_dir)

    overlaps = [a for a, b in itertools.combinations(spans, 2) if a[0] < b[1] and b[0] < a[1]]
    assert overlaps, f"no two trials overlapped in time: {sorted(spans)}"


def test_checkpoints_keep_best_and_latest(asha_search):
    prepared, results, store = asha_search
    table = trial_table(prepared.experiment_dir)
    completed = table[table["status"] == "completed"].iloc[0]
    folders = sorted(Path(completed["trial_dir"]).glob("checkpoint_*"))
    assert 1 <= len(folders) <= 3
    for folder in folders:
        assert {"state.pt", "generator.pt", "metrics.json", "samples.png"} <= {p.name for p in folder.iterdir()}


def test_trials_command_csv(asha_search, capsys):
    prepared, results, store = asha_search
    assert main(["trials", prepared.experiment_dir, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    assert header[:7] == ["trial_id", "run", "status", "epochs", "best_fid_proxy", "best_epoch", "last_fid_proxy"]
    assert {"lr_g", "beta1"} <= set(header)
    assert len(lines) == 7


def test_rerun_into_same_folder_is_rejected(asha_search, image_folder, random_feature_weights, tmp_path):
    from gansearch.search import SearchError

    prepared, _, _ = asha_search
    with pytest.raises(SearchError, match="already contains a search"):
        run_search(prepared)


def test_diverged_and_errored_trials_do_not_stop_search(ray_runtime, tmp_path, image_folder, random_feature_weights):
    spec = tiny_spec(
        search_space={
            "lr_d": {"type": "choice", "values": [2e-4, 1e30]},
            "batch_size": {"type": "choice", "values": [16, 4096]},
        },
        searcher={"type": "random", "seed": 0, "start_from_defaults": False, "points_to_evaluate": [
            {"lr_d": 2e-4, "batch_size": 16},
            {"lr_d": 1e30, "batch_size": 16},
            {"lr_d": 2e-4, "batch_size": 4096},
        ]},
        scheduler={"type": "fifo", "max_epochs": 2},
        trials={"num_samples": 3, "max_concurrent": 2, "cpus": 1},
    )
    spec["train"].pop("batch_size")
    prepared, results, store = run_tiny(tmp_path, image_folder, random_feature_weights, spec)

    table = trial_table(prepared.experiment_dir)
    by_status = dict(zip(table["status"], table.to_dict("records")))
    assert sorted(by_status) == ["completed", "diverged", "errored"]
    assert by_status["diverged"]["end_reason"] == "non-finite loss"
    assert "batch_size 4096 is larger than the 72 training images" in by_status["errored"]["end_reason"]
    assert table.iloc[0]["status"] == "completed"

    states = optuna_states(Path(prepared.experiment_dir))
    assert sorted(states) == ["COMPLETE", "FAIL", "FAIL"]

    _, children = child_runs(store)
    ends = {run.data.tags[TAG_END]: run for run in children}
    assert set(ends) == {"completed", "diverged", "errored"}
    assert ends["diverged"].data.tags[TAG_END_REASON] == "non-finite loss"
    assert "fid_proxy" not in ends["diverged"].data.metrics
