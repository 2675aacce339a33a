"""Resuming: the best trial trained longer, and interrupted searches continued through Tuner.restore."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gansearch.resume import ResumeError, resume_trial
from gansearch.search import prepare_search, run_search
from gansearch.spec import validate_document
from gansearch.tracking import TAG_ROLE, TAG_SOURCE_EPOCH, TAG_SOURCE_RUN, TAG_TRIAL_ID, MLflowStore
from gansearch.trials import trial_table

pytestmark = pytest.mark.slow


def spec_dict(weights, **trials) -> dict:
    return {
        "name": "resumable",
        "train": {"batch_size": 16, "z_dim": 8, "g_width": 4, "d_width": 4},
        "search_space": {"lr_g": {"type": "loguniform", "low": 1e-5, "high": 1e-2}},
        "metrics": {"n_samples": 40, "feature_weights": str(weights)},
        "searcher": {"type": "optuna", "seed": 1},
        "scheduler": {"type": "fifo", "max_epochs": 2},
        "trials": {"num_samples": 2, "max_concurrent": 2, "cpus": 1, **trials},
    }


@pytest.fixture(scope="module")
def finished_search(ray_runtime, tmp_path_factory, image_folder, random_feature_weights):
    spec = spec_dict(random_feature_weights)
    prepared = prepare_search(
        validate_document(spec, "test"), yaml.safe_dump(spec), data=str(image_folder),
        storage=str(tmp_path_factory.mktemp("resume") / "results"),
    )
    outcome = run_search(prepared)
    return prepared, outcome


@pytest.fixture(scope="module")
def resumed(finished_search):
    prepared, _ = finished_search
    results, run_dir = resume_trial(prepared.experiment_dir, epochs=4)
    return prepared, results, run_dir


def test_resume_continues_best_trial(finished_search, resumed):
    prepared, outcome = finished_search
    _, results, run_dir = resumed
    best = outcome.table.iloc[0]

    config = json.loads(next(run_dir.glob("train_gan_*/params.json")).read_text())
    epochs = [json.loads(line)["epoch"] for line in next(run_dir.glob("train_gan_*/result.json")).read_text().splitlines()]

    assert results.num_errors == 0
    assert config["lr_g"] == best["lr_g"]
    assert epochs == [3, 4]


def test_resume_recorded_under_parent_run(finished_search, resumed):
    prepared, outcome = finished_search
    store = MLflowStore(prepared.tracking_uri, prepared.experiment_name)
    runs = store.client.search_runs([store.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(TAG_ROLE) == "search")
    source = next(r for r in runs if r.data.tags.get(TAG_TRIAL_ID) == outcome.table.iloc[0]["trial_id"] and r.data.tags.get(TAG_ROLE) == "trial")
    resume = [r for r in runs if r.data.tags.get(TAG_ROLE) == "resume"]

    assert len(resume) == 1
    assert resume[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert resume[0].data.tags[TAG_SOURCE_RUN] == source.info.run_id
    assert resume[0].data.tags[TAG_SOURCE_EPOCH] == str(outcome.table.iloc[0]["best_epoch"])
    steps = [m.step for m in store.client.get_metric_history(resume[0].info.run_id, "fid_proxy")]
    assert steps == [3, 4]


def test_trials_lists_resumed_run(finished_search, resumed):
    prepared, _ = finished_search
    table = trial_table(prepared.experiment_dir)
    resumed_rows = table[table["run"].str.startswith("resume-")]
    assert len(resumed_rows) == 1
    assert resumed_rows.iloc[0]["epochs"] == 4
    assert resumed_rows.iloc[0]["status"] == "completed"


def test_resume_rejects_epochs_at_checkpoint(finished_search):
    prepared, outcome = finished_search
    trial_id = outcome.table.iloc[0]["trial_id"]
    with pytest.raises(ResumeError, match=r"--epochs 2 is not above epoch 2 of trial .*'s last checkpoint"):
        resume_trial(prepared.experiment_dir, epochs=2, trial_id=trial_id, which="last")


def test_resume_rejects_unknown_trial(finished_search):
    prepared, _ = finished_search
    with pytest.raises(ResumeError, match="trial 'nope' not found; trials in this search:"):
        resume_trial(prepared.experiment_dir, epochs=5, trial_id="nope")


def test_resume_cli_rejects_missing_experiment(tmp_path, capsys):
    from gansearch.cli import main

    assert main(["resume", str(tmp_path / "absent"), "--epochs", "3"]) == 2
    assert "no gansearch experiment" in capsys.readouterr().err


# ----------------------------------------------------------------------------- interrupted searches


def read_epochs(trial_dir: Path) -> list[int]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"gansearch run exited early with code {process.returncode}")
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the search to reach the interruption point")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_search_continues(tmp_path, image_folder, random_feature_weights, stop_signal):
    spec = spec_dict(random_feature_weights, num_samples=3, max_concurrent=1)
    spec["scheduler"]["max_epochs"] = 6
    spec_file = tmp_path / "resumable.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    storage = tmp_path / "results"
    experiment = storage / "resumable"
    environment = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "GANSEARCH_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "gansearch.cli", "run", str(spec_file), "--data", str(image_folder), "--storage", str(storage)]

    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)

        def one_finished_one_running() -> bool:
            counts = [len(read_epochs(d)) for d in experiment.glob("train_gan_*")]
            return 6 in counts and any(1 < count < 5 for count in counts)

        wait_for(one_finished_one_running, 600, process)
        before = {d.name: read_epochs(d) for d in experiment.glob("train_gan_*")}
        process.send_signal(stop_signal)
        process.wait(timeout=300)

    assert process.returncode != 0
    with open(tmp_path / "second.log", "w") as log:
        resumed = subprocess.run([*command[:3], "run", "--resume", str(experiment)], stdout=log, stderr=subprocess.STDOUT, env=environment, timeout=900)
    assert resumed.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]

    after = {d.name: read_epochs(d) for d in experiment.glob("train_gan_*")}
    assert len(after) == 3
    for name, epochs in before.items():
        if len(epochs) == 6:
            assert after[name] == epochs, "a finished trial was run again"
    for name, epochs in after.items():
        # A SIGKILL can lose the last epoch's checkpoint record, and that epoch then runs again,
        # but a trial never goes back to epoch 1.
        assert epochs.count(1) == 1, f"{name} restarted instead of continuing: {epochs}"
        assert epochs == sorted(epochs), f"{name} went backwards: {epochs}"
        assert epochs[-1] == 6

    store = MLflowStore(f"sqlite:///{storage / 'mlflow.db'}", "resumable")
    runs = store.client.search_runs([store.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(trial_runs) == 3
    assert len({r.data.tags[TAG_TRIAL_ID] for r in trial_runs}) == 3
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    assert len([r for r in runs if r.data.tags.get(TAG_ROLE) == "search"]) == 1


def test_resume_rejects_folder_without_tune_state(tmp_path, capsys):
    from gansearch.cli import main

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "gansearch.json").write_text("{not json")
    assert main(["run", "--resume", str(folder)]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_killed_worker_is_retried_from_checkpoint(ray_runtime, tmp_path, image_folder, random_feature_weights):
    import threading

    spec = spec_dict(random_feature_weights, num_samples=1, max_failures=1)
    spec["scheduler"]["max_epochs"] = 3
    prepared = prepare_search(validate_document(spec, "test"), yaml.safe_dump(spec), data=str(image_folder), storage=str(tmp_path))
    experiment = Path(prepared.experiment_dir)
    killed = []

    def kill_after_first_epoch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            for result_file in experiment.glob("train_gan_*/result.json"):
                lines = result_file.read_text().splitlines()
                if lines:
                    pid = json.loads(lines[0])["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    killer.start()
    outcome = run_search(prepared)
    killer.join(timeout=5)

    assert killed, "the trial's worker was never killed"
    row = outcome.table.iloc[0]
    epochs = read_epochs(Path(row["trial_dir"]))
    assert row["status"] == "completed"
    assert epochs == sorted(set(epochs))
    assert epochs[-1] == 3
    pids = {json.loads(line)["pid"] for line in (Path(row["trial_dir"]) / "result.json").read_text().splitlines()}
    assert len(pids) == 2, "the trial did not move to a new worker process"
    trial_runs = [r for r in outcome.store.client.search_runs([outcome.store.experiment_id]) if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(trial_runs) == 1


def test_remote_experiment_mirror_matches(finished_search):
    import pyarrow.fs

    from gansearch.trials import mirror_experiment

    prepared, _ = finished_search
    mirror = mirror_experiment(prepared.experiment_dir, pyarrow.fs.LocalFileSystem())

    local = trial_table(prepared.experiment_dir).set_index("trial_id")
    mirrored = trial_table(mirror).set_index("trial_id")
    assert sorted(mirrored.index) == sorted(local.index)
    assert (mirrored["best_fid_proxy"] == local.loc[mirrored.index, "best_fid_proxy"]).all()
    assert (mirrored["status"] == local.loc[mirrored.index, "status"]).all()
    assert not list(mirror.rglob("*.pt"))


def test_restore_skips_deleted_checkpoint(ray_runtime, tmp_path, image_folder, random_feature_weights):
    """A SIGKILL can leave Tune's saved state naming a checkpoint that retention already deleted."""
    import shutil

    from gansearch.resume import prepare_resumed_search

    spec = spec_dict(random_feature_weights, num_samples=1)
    spec["scheduler"]["max_epochs"] = 4
    spec["checkpoints"] = {"keep_best": 2}
    prepared = prepare_search(validate_document(spec, "test"), yaml.safe_dump(spec), data=str(image_folder), storage=str(tmp_path))
    run_search(prepared)
    experiment = Path(prepared.experiment_dir)
    trial_dir = next(experiment.glob("train_gan_*"))

    # Make the saved state look as it would after a SIGKILL mid-trial: the trial still running, and
    # the checkpoint the state names as latest gone from storage.
    state_file = max(experiment.glob("experiment_state-*.json"))
    document = json.loads(state_file.read_text())
    trial = json.loads(document["trial_data"][0][0])
    trial["status"] = "RUNNING"
    document["trial_data"][0][0] = json.dumps(trial)
    state_file.write_text(json.dumps(document))
    newest = sorted(trial_dir.glob("checkpoint_*"))[-1]
    shutil.rmtree(newest)
    remaining = sorted(trial_dir.glob("checkpoint_*"))
    assert remaining, "retention left no older checkpoint to continue from"

    outcome = run_search(prepare_resumed_search(str(experiment)), resume=True)

    assert outcome.table.iloc[0]["status"] == "completed"
    assert read_epochs(trial_dir)[-1] == 4
