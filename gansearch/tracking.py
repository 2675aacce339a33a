"""MLflow tracking of a search: one parent run per search, one nested run per trial.

Only the Tune driver writes to MLflow, through ``MLflowTracker`` (a Tune callback), because a
SQLite store has no concurrent writers. Files that trials write (sample grids, generators) reach
MLflow through the trial's persisted checkpoints, which the driver reads.

Run identity lives in MLflow tags (``gansearch.search_id``, ``gansearch.trial_id``), so a restored
search finds and continues its runs instead of creating duplicates.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image
from ray.tune import Callback

from gansearch.checkpoint import GENERATOR_FILE, SAMPLES_FILE
from gansearch.trainable import SETTINGS_KEY

logger = logging.getLogger(__name__)

TAG_SEARCH_ID = "gansearch.search_id"
TAG_TRIAL_ID = "gansearch.trial_id"
TAG_ROLE = "gansearch.role"  # search, trial or resume
TAG_END = "gansearch.end"  # completed, stopped early, diverged or errored
TAG_END_REASON = "gansearch.end_reason"
TAG_BEST_CHECKPOINT = "gansearch.best_checkpoint"
TAG_SOURCE_RUN = "gansearch.source_run_id"
TAG_SOURCE_EPOCH = "gansearch.source_epoch"
PARENT_TAG = "mlflow.parentRunId"
LOGGED_METRICS = (
    "d_loss", "g_loss", "d_real", "d_fake", "fid_proxy", "kid_proxy", "images_per_s",
    "gpu_peak_mem_mb", "time_this_iter_s",
)


def default_tracking_uri(storage_dir: Path) -> str:
    """Return ``MLFLOW_TRACKING_URI`` when set, else a SQLite file in the results folder."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{(storage_dir / 'mlflow.db').resolve()}"


def runs_view_url(ui_address: str, experiment_id: str) -> str:
    """Return the MLflow 3 UI address of an experiment's runs table (the UI opens on GenAI views)."""
    return f"{ui_address.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class MLflowStore:
    """A thin layer over ``MlflowClient`` for the runs of one search."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            location = None
            if artifact_root is not None:
                location = (artifact_root / experiment_name).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id

    def find_run(self, **tags: str) -> str | None:
        """Return the id of the newest run carrying all ``tags``, or None."""
        query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
        )
        return runs[0].info.run_id if runs else None

    def start_run(self, name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(key, str(value)) for key, value in params.items() if key not in existing]
        if fresh:
            self.client.log_batch(run_id, params=fresh)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(value)
        ]
        if entries:
            self.client.log_batch(run_id, metrics=entries)


def trial_params(config: dict) -> dict[str, Any]:
    """Return the GAN settings of a trial config, without the fixed per-search settings."""
    return {key: value for key, value in config.items() if key != SETTINGS_KEY}


class MLflowTracker(Callback):
    """Records a search in MLflow from the Tune driver."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        search_id: str,
        spec_file: Path | None,
        max_epochs: int,
        image_every: int = 1,
        artifact_root: Path | None = None,
        trial_role: str = "trial",
        trial_tags: dict[str, str] | None = None,
        metric: str = "fid_proxy",
    ):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.search_id = search_id
        self.spec_file = spec_file
        self.max_epochs = max_epochs
        self.image_every = image_every
        self.artifact_root = artifact_root
        self.trial_role = trial_role
        self.trial_tags = trial_tags or {}
        self.metric = metric  # ranks checkpoints, as Tune's CheckpointConfig does
        self.store: MLflowStore | None = None
        self.parent_run_id: str | None = None
        self.run_ids: dict[str, str] = {}
        self.best: dict[str, float] = {}
        self.placed: set[str] = set()  # trials whose node and device are tagged
        self.best_checkpoints: dict = {}  # trial id -> ray.tune.Checkpoint with the lowest metric

    # Tune calls setup once in the driver before any trial starts.
    def setup(self, **info) -> None:
        self.store = MLflowStore(self.tracking_uri, self.experiment_name, self.artifact_root)
        self.parent_run_id = self.store.find_run(**{TAG_SEARCH_ID: self.search_id, TAG_ROLE: "search"})
        if self.parent_run_id is None:
            tags = {TAG_SEARCH_ID: self.search_id, TAG_ROLE: "search"}
            self.parent_run_id = self.store.start_run(self.search_id, tags)
            if self.spec_file is not None and Path(self.spec_file).is_file():
                self.store.client.log_artifact(self.parent_run_id, str(self.spec_file), "spec")
        else:
            self.store.reopen(self.parent_run_id)
            logger.info("continuing MLflow parent run %s", self.parent_run_id)

    def _trial_run(self, trial) -> str:
        if trial.trial_id in self.run_ids:
            return self.run_ids[trial.trial_id]

        tags = {TAG_SEARCH_ID: self.search_id, TAG_TRIAL_ID: trial.trial_id}
        run_id = self.store.find_run(**tags)
        if run_id is None:
            run_id = self.store.start_run(
                str(trial),
                {**tags, TAG_ROLE: self.trial_role, PARENT_TAG: self.parent_run_id, **self.trial_tags},
            )
            self.store.log_params(run_id, trial_params(trial.config))
        else:
            self.store.reopen(run_id)
            best = self.store.client.get_run(run_id).data.metrics.get(f"best_{self.metric}")
            if best is not None:
                self.best[trial.trial_id] = best
        self.run_ids[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._trial_run(trial)

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self._trial_run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._trial_run(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {key: result[key] for key in LOGGED_METRICS if key in result}
        self.store.log_metrics(run_id, metrics, step)
        if result.get("diverged"):
            self.store.client.set_tag(run_id, TAG_END_REASON, str(result.get("end_reason", "")))
        if trial.trial_id not in self.placed:
            self._tag_placement(run_id, result)
            self.placed.add(trial.trial_id)

    def _tag_placement(self, run_id: str, result: dict) -> None:
        """Tag where the trial ran: the Ray node and the torch device."""
        for key in ("node_id", "node_ip", "device"):
            self.store.client.set_tag(run_id, f"gansearch.{key}", str(result.get(key, "")))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        run_id = self._trial_run(trial)
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0))
        value = result.get(self.metric, math.inf)
        if epoch and (epoch % self.image_every == 0 or epoch == 1 or epoch == self.max_epochs):
            self._log_samples(run_id, checkpoint, epoch)
        if value < self.best.get(trial.trial_id, math.inf):
            self.best[trial.trial_id] = value
            self.best_checkpoints[trial.trial_id] = checkpoint
            self.store.client.set_tag(run_id, TAG_BEST_CHECKPOINT, checkpoint.path)
            self.store.log_metrics(run_id, {f"best_{self.metric}": value, "best_epoch": epoch}, epoch)

    def _log_samples(self, run_id: str, checkpoint, epoch: int) -> None:
        payload = _read_checkpoint_file(checkpoint, SAMPLES_FILE)
        if payload is None:
            return
        with Image.open(io.BytesIO(payload)) as image:
            self.store.client.log_image(run_id, image.convert("RGB"), key="samples", step=epoch)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, errored=True)

    def _finish(self, trial, errored: bool) -> None:
        run_id = self._trial_run(trial)
        result = trial.last_result or {}
        end, reason = trial_ending(result, self.max_epochs, errored, _error_text(trial))
        self.store.client.set_tag(run_id, TAG_END, end)
        if reason:
            self.store.client.set_tag(run_id, TAG_END_REASON, reason[:5000])
        if not errored:
            self._log_best_generator(run_id, trial.trial_id)
        self.store.client.set_terminated(run_id, status="FAILED" if end in {"errored", "diverged"} else "FINISHED")

    def on_experiment_end(self, trials, **info) -> None:
        """Mark the runs of trials that an interruption left unfinished as KILLED, until a restore."""
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR") or trial.trial_id not in self.run_ids:
                continue
            run_id = self.run_ids[trial.trial_id]
            self.store.client.set_tag(run_id, TAG_END, "interrupted")
            self.store.client.set_terminated(run_id, status="KILLED")

    def _log_best_generator(self, run_id: str, trial_id: str) -> None:
        checkpoint = self.best_checkpoints.get(trial_id)
        if checkpoint is None:
            # A restored search: the tag contains the path, which names a checkpoint on local or
            # mounted storage. NOTE: for s3:// or gs:// storage the generator is then not logged.
            best_path = self.store.client.get_run(run_id).data.tags.get(TAG_BEST_CHECKPOINT)
            if not best_path or not Path(best_path).is_dir():
                return
            from ray.tune import Checkpoint

            checkpoint = Checkpoint(best_path)
        payload = _read_checkpoint_file(checkpoint, GENERATOR_FILE)
        if payload is None:
            logger.warning("best checkpoint %s has no %s to log", checkpoint.path, GENERATOR_FILE)
            return
        with tempfile.TemporaryDirectory() as directory:
            target = Path(directory) / GENERATOR_FILE
            target.write_bytes(payload)
            self.store.client.log_artifact(run_id, str(target), "best_checkpoint")


def finish_search(store: MLflowStore, search_id: str, table_csv: str, status: str = "FINISHED") -> str | None:
    """Attach the trial table to the search's parent run and set its status; return the run id.

    ``status`` is FINISHED, FAILED (no trial produced a score) or KILLED (interrupted; a restore
    reopens the run).
    """
    parent_run_id = store.find_run(**{TAG_SEARCH_ID: search_id, TAG_ROLE: "search"})
    if parent_run_id is None:
        logger.warning("no MLflow parent run found for search %s", search_id)
        return None
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "trials.csv"
        target.write_text(table_csv)
        store.client.log_artifact(parent_run_id, str(target))
    store.client.set_terminated(parent_run_id, status=status)
    return parent_run_id


def trial_ending(result: dict, max_epochs: int, errored: bool, error_text: str = "") -> tuple[str, str]:
    """Classify how a trial ended: completed, stopped early, diverged or errored, with a reason."""
    if errored:
        return "errored", error_text
    if result.get("diverged"):
        return "diverged", str(result.get("end_reason", ""))
    if int(result.get("epoch", 0)) >= max_epochs:
        return "completed", ""
    return "stopped early", "ASHA stopped it at a rung"


def _error_text(trial) -> str:
    try:
        error_file = trial.error_file
        if error_file and Path(error_file).is_file():
            return Path(error_file).read_text()[-2000:]
    except OSError as error:
        logger.warning("could not read the error file of trial %s: %s", trial.trial_id, error)
    return "the trial raised an exception; see its error.txt"


def _read_checkpoint_file(checkpoint, name: str) -> bytes | None:
    """Read one file from a persisted checkpoint on any pyarrow file system, or None if absent."""
    path = f"{checkpoint.path.rstrip('/')}/{name}"
    try:
        with checkpoint.filesystem.open_input_stream(path) as stream:
            return stream.read()
    except (FileNotFoundError, OSError):
        return None

