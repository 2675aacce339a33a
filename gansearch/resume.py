"""Continuing work: train a search's best trial longer, or restore an interrupted search.

``gansearch resume`` starts a new single-trial Tune run under ``STORAGE/NAME/resume-*`` from the
chosen checkpoint, with the source trial's config and resources and no early stopping, recorded as
a new MLflow run under the search's parent run. ``gansearch run --resume`` restores the search
itself through ``Tuner.restore``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from gansearch.search import PreparedSearch, init_ray, is_uri
from gansearch.spec import SpecError, validate_document
from gansearch.trainable import SETTINGS_KEY, TrialSettings, train_gan
from gansearch.trials import RESUME_PREFIX, ExperimentNotFound, read_search_record, resolve_experiment, trial_table

logger = logging.getLogger(__name__)


class ResumeError(ValueError):
    """A resume request that cannot be met: unknown trial, too few epochs, no usable checkpoint."""


def prepared_from_record(experiment_dir: Path, address: str | None = None) -> PreparedSearch:
    """Rebuild the prepared search from the record ``gansearch run`` wrote beside the results."""
    record = read_search_record(experiment_dir)
    try:
        spec = validate_document(record["spec"], str(experiment_dir / "gansearch.json"))
        return PreparedSearch(
            spec=spec,
            spec_text=(experiment_dir / "spec.yaml").read_text() if (experiment_dir / "spec.yaml").is_file() else "",
            data=record["data"],
            storage=record["storage"],
            name=record["name"],
            search_id=record.get("search_id", record["name"]),
            tracking_uri=record["tracking_uri"],
            experiment_name=record["experiment_name"],
            cache_dir=None if address else record.get("cache_dir"),
            address=address,
        )
    except (KeyError, SpecError) as error:
        raise ExperimentNotFound(
            f"experiment folder {str(experiment_dir)!r} has a damaged or foreign search record: {error}"
        ) from error


def prepare_resumed_search(experiment: str, storage: str | None = None, address: str | None = None) -> PreparedSearch:
    """Check that an interrupted search can be restored; raise with the reason when it cannot."""
    from ray.tune import Tuner

    experiment_dir = resolve_experiment(experiment, storage or "./results")
    prepared = prepared_from_record(experiment_dir, address)
    if not Tuner.can_restore(str(experiment_dir)):
        raise ExperimentNotFound(
            f"experiment folder {str(experiment_dir)!r} has no Tune state to restore (tuner.pkl is missing): "
            "the search was stopped before its first trial started; start it again with 'gansearch run SPEC'"
        )
    states = list(experiment_dir.glob("experiment_state-*.json"))
    for state in states:
        try:
            json.loads(state.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ExperimentNotFound(
                f"Tune state file {str(state)!r} is truncated or corrupt ({error}); the search cannot be restored"
            ) from error
    return prepared


def list_checkpoints(trial_dir: Path) -> list[tuple[Path, int, float]]:
    """Return (folder, epoch, fid_proxy) of every complete checkpoint in a trial folder."""
    found = []
    for folder in sorted(trial_dir.glob("checkpoint_*")):
        metrics_file = folder / "metrics.json"
        # Remote mirrors hold metrics.json only; Tune registers a checkpoint once all its files are up.
        if not metrics_file.is_file():
            continue
        try:
            metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError:
            logger.warning("skipping checkpoint %s: unreadable metrics.json", folder)
            continue
        found.append((folder, int(metrics["epoch"]), float(metrics.get("fid_proxy", math.inf))))
    return found


def choose_trial(table, trial_id: str | None) -> dict:
    if table.empty:
        raise ResumeError("the search has no trials yet")
    if trial_id is not None:
        matches = table[table["trial_id"] == trial_id]
        if matches.empty:
            known = ", ".join(table["trial_id"].astype(str).head(20))
            raise ResumeError(f"trial {trial_id!r} not found; trials in this search: {known}")
        return matches.iloc[0].to_dict()

    usable = table[~table["status"].isin(["diverged", "errored"]) & table["best_fid_proxy"].notna()]
    if usable.empty:
        raise ResumeError("no trial finished an epoch without diverging or erroring; nothing to resume")
    return usable.sort_values("best_fid_proxy").iloc[0].to_dict()


def choose_checkpoint(trial_dir: Path, which: str) -> tuple[Path, int]:
    checkpoints = list_checkpoints(trial_dir)
    if not checkpoints:
        raise ResumeError(f"trial folder {str(trial_dir)!r} contains no complete checkpoint")
    if which == "best":
        folder, epoch, _ = min(checkpoints, key=lambda item: (item[2], -item[1]))
    else:
        folder, epoch, _ = max(checkpoints, key=lambda item: item[1])
    return folder, epoch


def resume_trial(
    experiment: str,
    epochs: int,
    trial_id: str | None = None,
    which: str = "best",
    storage: str = "./results",
    address: str | None = None,
):
    """Continue one trial of a search until ``epochs`` as a new single-trial Tune run; return its result."""
    from ray import tune

    from gansearch.schedulers import DivergenceAwareFIFO
    from gansearch.search import trial_dirname
    from gansearch.tracking import (
        TAG_SEARCH_ID, TAG_SOURCE_EPOCH, TAG_SOURCE_RUN, TAG_TRIAL_ID, MLflowStore, MLflowTracker, finish_search,
    )

    experiment_dir = resolve_experiment(experiment, storage)
    prepared = prepared_from_record(experiment_dir, address)

    row = choose_trial(trial_table(experiment_dir), trial_id)
    checkpoint_dir, checkpoint_epoch = choose_checkpoint(Path(row["trial_dir"]), which)
    # With remote storage, experiment_dir is a local mirror of the small files: point the new run
    # and its starting checkpoint at the remote experiment instead.
    run_root = str(experiment_dir)
    checkpoint_location = str(checkpoint_dir)
    if is_uri(prepared.storage):
        run_root = prepared.experiment_dir
        checkpoint_location = f"{run_root}/{checkpoint_dir.relative_to(experiment_dir).as_posix()}"
    if epochs <= checkpoint_epoch:
        raise ResumeError(
            f"--epochs {epochs} is not above epoch {checkpoint_epoch} of trial {row['trial_id']}'s {which} checkpoint; "
            f"pass a larger --epochs to train further"
        )

    config = json.loads((Path(row["trial_dir"]) / "params.json").read_text())
    settings = TrialSettings(**{**config[SETTINGS_KEY], "max_epochs": epochs, "init_checkpoint": checkpoint_location})
    config[SETTINGS_KEY] = settings.to_dict()

    store = MLflowStore(prepared.tracking_uri, prepared.experiment_name)
    source_run = store.find_run(**{TAG_SEARCH_ID: prepared.search_id, TAG_TRIAL_ID: str(row["trial_id"])})
    tracker = MLflowTracker(
        tracking_uri=prepared.tracking_uri,
        experiment_name=prepared.experiment_name,
        search_id=prepared.search_id,
        spec_file=None,
        max_epochs=epochs,
        image_every=prepared.spec.tracking.image_every,
        metric=prepared.spec.metric,
        trial_role="resume",
        trial_tags={TAG_SOURCE_RUN: source_run or "", TAG_SOURCE_EPOCH: str(checkpoint_epoch)},
    )

    name = f"{RESUME_PREFIX}{row['trial_id']}-e{checkpoint_epoch}-to{epochs}-{time.strftime('%Y%m%d-%H%M%S')}"
    logger.info(
        "resuming trial %s (best fid_proxy %.4g) from %s (epoch %d) until epoch %d as %s",
        row["trial_id"], row["best_fid_proxy"], checkpoint_dir, checkpoint_epoch, epochs, name,
    )
    spec = prepared.spec
    trainable = tune.with_resources(train_gan, {"cpu": spec.trials.cpus, "gpu": spec.trials.gpus})
    tuner = tune.Tuner(
        trainable,
        param_space=config,
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, scheduler=DivergenceAwareFIFO(), num_samples=1,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=run_root,
            callbacks=[tracker],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.checkpoints.keep_best,
                checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=spec.trials.max_failures),
        ),
    )
    init_ray(address)
    results = tuner.fit()

    # The tracker reopened the search's parent run to nest this run under it; close it again.
    if is_uri(prepared.storage):
        experiment_dir = resolve_experiment(prepared.experiment_dir)
    finish_search(store, prepared.search_id, trial_table(experiment_dir).to_csv(index=False))
    return results, experiment_dir / name

