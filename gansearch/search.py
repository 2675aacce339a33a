"""Assembly of a search: Optuna proposes configs, ASHA stops weak trials, Tune runs them, MLflow records.

``prepare_search`` runs every check that can fail (spec, data, metric sample count, storage,
tracking store) before Ray starts. ``run_search`` then starts Ray and runs the Tuner.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gansearch.data import check_source, default_cache_dir, load_split
from gansearch.spec import Choice, LogUniform, RandInt, SearchSpec, Uniform
from gansearch.storage import atomic_write_bytes
from gansearch.trainable import SETTINGS_KEY, TrialSettings, train_gan
from gansearch.tracking import default_tracking_uri

logger = logging.getLogger(__name__)

SPEC_COPY = "spec.yaml"
SEARCH_RECORD = "gansearch.json"  # the resolved search, written before training starts


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SearchError(RuntimeError):
    """A search that cannot start or continue: bad storage, an existing or foreign experiment folder."""


def new_search_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def is_uri(storage: str) -> bool:
    return "://" in storage and not storage.startswith("file://")


@dataclass
class PreparedSearch:
    """A validated search, ready to hand to Ray."""

    spec: SearchSpec
    spec_text: str
    data: str
    storage: str  # absolute local folder or URI
    name: str
    tracking_uri: str
    experiment_name: str
    cache_dir: str | None
    address: str | None = None
    # Unique per search, unlike the name: a new search that reuses a name gets its own MLflow runs.
    search_id: str = field(default_factory=lambda: new_search_id("search"))

    @property
    def local_storage(self) -> Path | None:
        return None if is_uri(self.storage) else Path(self.storage)

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def trial_settings(self) -> TrialSettings:
        spec = self.spec
        return TrialSettings(
            data=self.data,
            max_epochs=spec.scheduler.max_epochs,
            subset=spec.data.subset,
            n_samples=spec.metrics.n_samples,
            metric_split=spec.metrics.split,
            feature_weights=spec.metrics.feature_weights,
            cache_dir=self.cache_dir,
            image_every=spec.tracking.image_every,
            saturation_epochs=spec.divergence.saturation_epochs,
            d_real_min=spec.divergence.d_real_min,
            d_fake_max=spec.divergence.d_fake_max,
        )

    def record(self) -> dict:
        return {
            "name": self.name,
            "search_id": self.search_id,
            "data": self.data,
            "storage": self.storage,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "cache_dir": self.cache_dir,
            "spec": self.spec.model_dump(mode="json"),
        }


def resolve_data(source: str) -> str:
    """Return ``cifar10`` or the absolute path of a data folder or archive (trials run elsewhere)."""
    check_source(source)
    return source if source == "cifar10" else str(Path(source).expanduser().resolve())


def prepare_search(
    spec: SearchSpec,
    spec_text: str,
    data: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    address: str | None = None,
    check_reference: bool = True,
) -> PreparedSearch:
    """Validate everything a search needs and warm the caches its trials read, before Ray starts."""
    from gansearch.metrics.proxy import FIDProxy

    data = resolve_data(data or spec.data.source)
    storage = storage or spec.storage
    if not is_uri(storage):
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
    name = name or spec.name
    if not NAME_PATTERN.fullmatch(name):
        raise SearchError(
            f"--name {name!r} is invalid: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    experiment_name = spec.tracking.experiment or name

    tracking_uri = spec.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri is None:
        if is_uri(storage):
            raise SearchError(
                f"storage {storage!r} is remote, so the default SQLite tracking store has no local folder; "
                "set tracking.mlflow_uri in the spec or MLFLOW_TRACKING_URI to an MLflow server"
            )
        tracking_uri = default_tracking_uri(Path(storage))

    # Decode the data and compute the real statistics once here: this surfaces unreadable images and
    # a too-large n_samples now, and the trials then read both from the cache.
    cache_dir = str(default_cache_dir()) if address is None else None
    load_split(data, "train", subset=spec.data.subset, cache_dir=cache_dir)
    if check_reference:
        FIDProxy(
            data,
            split=spec.metrics.split,
            n_samples=spec.metrics.n_samples,
            feature_weights=spec.metrics.feature_weights,
            cache_dir=cache_dir,
        )

    return PreparedSearch(
        spec=spec, spec_text=spec_text, data=data, storage=storage, name=name,
        tracking_uri=tracking_uri, experiment_name=experiment_name, cache_dir=cache_dir, address=address,
        search_id=new_search_id(name),
    )


def tune_domain(domain):
    from ray import tune

    if isinstance(domain, LogUniform):
        return tune.loguniform(domain.low, domain.high)
    if isinstance(domain, Uniform):
        return tune.uniform(domain.low, domain.high)
    if isinstance(domain, RandInt):
        return tune.randint(domain.low, domain.high + 1)  # Tune's upper bound is exclusive
    if isinstance(domain, Choice):
        return tune.choice(domain.values)
    raise TypeError(f"unsupported search domain {domain!r}")


def param_space(prepared: PreparedSearch) -> dict[str, Any]:
    space: dict[str, Any] = dict(prepared.spec.fixed_settings())
    for key, domain in prepared.spec.search_space.items():
        space[key] = tune_domain(domain)
    space[SETTINGS_KEY] = prepared.trial_settings().to_dict()
    return space


def trials_that_fit(spec: SearchSpec) -> int:
    """Return how many trials the connected Ray cluster can run at once with the spec's resources."""
    import ray

    resources = ray.cluster_resources()
    fits = [int(resources.get("CPU", 0) // spec.trials.cpus)]
    if spec.trials.gpus > 0:
        fits.append(int(resources.get("GPU", 0) // spec.trials.gpus))
    return max(1, min(min(fits), spec.trials.num_samples))


def build_searcher(spec: SearchSpec, max_concurrent: int):
    """Return Optuna (TPE, or its random sampler for random search), limited to max_concurrent.

    The limiter is always there: without one, Tune 2.60 keeps a single trial pending at a time for
    custom searchers, and the trials of a search then run one after another.
    """
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from gansearch.schedulers import DivergenceAwareOptunaSearch

    if spec.searcher.type == "optuna":
        sampler = optuna.samplers.TPESampler(seed=spec.searcher.seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.searcher.seed)
    searcher = DivergenceAwareOptunaSearch(sampler=sampler, points_to_evaluate=spec.initial_points() or None)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def build_scheduler(spec: SearchSpec):
    from gansearch.schedulers import DivergenceAwareASHA, DivergenceAwareFIFO

    if spec.scheduler.type == "fifo":
        return DivergenceAwareFIFO()
    return DivergenceAwareASHA(
        time_attr="epoch",
        max_t=spec.scheduler.max_epochs,
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )


def build_tuner(prepared: PreparedSearch, callbacks: list):
    from ray import tune

    spec = prepared.spec
    trainable = tune.with_resources(train_gan, {"cpu": spec.trials.cpus, "gpu": spec.trials.gpus})
    # Metric and mode are set here only; the searcher and scheduler inherit them from TuneConfig.
    tune_config = tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=build_searcher(spec, spec.trials.max_concurrent or trials_that_fit(spec)),
        scheduler=build_scheduler(spec),
        num_samples=spec.trials.num_samples,
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=prepared.name,
        storage_path=prepared.storage,
        callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=spec.checkpoints.keep_best,
            checkpoint_score_attribute=spec.metric,
            checkpoint_score_order=spec.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=spec.trials.max_failures),
        verbose=1,  # Tune's status table only; per-trial configs and results are in MLflow
    )
    return tune.Tuner(trainable, param_space=param_space(prepared), tune_config=tune_config, run_config=run_config)


def trial_dirname(trial) -> str:
    """Name trial folders by trial id alone: Tune's default packs the whole config into the name."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def write_search_record(prepared: PreparedSearch) -> None:
    """Save the spec and the resolved search beside the results, so any search can be rerun or resumed."""
    directory = prepared.local_storage
    if directory is None:
        return
    experiment_dir = directory / prepared.name
    experiment_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(experiment_dir / SPEC_COPY, prepared.spec_text.encode())
    atomic_write_bytes(experiment_dir / SEARCH_RECORD, json.dumps(prepared.record(), indent=2).encode())


def check_new_experiment(prepared: PreparedSearch) -> None:
    directory = prepared.local_storage
    if directory is None:
        return
    experiment_dir = directory / prepared.name
    if experiment_dir.exists() and any(experiment_dir.glob("experiment_state-*.json")):
        raise SearchError(
            f"experiment folder {str(experiment_dir)!r} already contains a search; continue it with "
            f"'gansearch run --resume {experiment_dir}' or choose another --name"
        )


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)


def check_shared_storage(storage: Path) -> None:
    """Raise SearchError when a local storage folder is not visible from every node of the cluster.

    Tune moves checkpoints between nodes through the storage, so on a cluster of several nodes a
    local folder must be a shared mount (NFS or similar). The check writes a marker file here and
    looks for it from a task pinned to each other node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"]]
    driver_node = ray.get_runtime_context().get_node_id()
    others = [node["NodeID"] for node in nodes if node["NodeID"] != driver_node]
    if not others:
        return

    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".gansearch-shared-{os.getpid()}"
    marker.write_text(driver_node)

    @ray.remote(num_cpus=0)
    def sees_marker(path: str) -> bool:
        return Path(path).is_file()

    try:
        checks = [
            sees_marker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(str(marker))
            for node_id in others
        ]
        blind = [node_id for node_id, seen in zip(others, ray.get(checks, timeout=120)) if not seen]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise SearchError(
            f"storage {str(storage)!r} is a local folder that {len(blind)} of the cluster's {len(nodes)} nodes "
            f"cannot see (node {blind[0][:12]}...); Tune moves checkpoints between nodes through the storage, "
            "so use an s3:// or gs:// URI or a folder on a file system mounted on every node"
        )


def run_search(prepared: PreparedSearch, resume: bool = False):
    """Run (or continue) the search and return Tune's ResultGrid."""
    from gansearch.tracking import MLflowStore, MLflowTracker, finish_search

    if not resume:
        check_new_experiment(prepared)
    write_search_record(prepared)
    spec_file = prepared.local_storage / prepared.name / SPEC_COPY if prepared.local_storage else None
    tracker = MLflowTracker(
        tracking_uri=prepared.tracking_uri,
        experiment_name=prepared.experiment_name,
        search_id=prepared.search_id,
        spec_file=spec_file,
        max_epochs=prepared.spec.scheduler.max_epochs,
        image_every=prepared.spec.tracking.image_every,
        metric=prepared.spec.metric,
        artifact_root=prepared.local_storage / "mlartifacts" if prepared.local_storage else None,
    )

    init_ray(prepared.address)
    if prepared.local_storage is not None:
        check_shared_storage(prepared.local_storage)
    # A restored Tuner brings back the callbacks pickled with it, this tracker among them.
    tuner = restore_tuner(prepared) if resume else build_tuner(prepared, [tracker])
    results = tuner.fit()

    from gansearch.trials import trial_table

    store = MLflowStore(prepared.tracking_uri, prepared.experiment_name)
    table = trial_table(prepared.experiment_dir)
    outcome = SearchOutcome(
        results=results,
        store=store,
        table=table,
        interrupted=search_interrupted(results, table, prepared.spec.trials.num_samples),
    )
    if outcome.interrupted:
        status = "KILLED"
    elif outcome.scored:
        status = "FINISHED"
    else:
        status = "FAILED"
    finish_search(store, prepared.search_id, table.to_csv(index=False), status=status)
    return outcome


def search_interrupted(results, table, num_samples: int) -> bool:
    """Return whether Tune returned before every trial of the search had been created and had ended.

    A Ctrl-C makes ``Tuner.fit`` return normally, so this is how the caller tells the two apart.
    """
    unfinished = bool(len(table)) and bool((table["status"] == "unfinished").any())
    never_created = len(results) < num_samples
    still_running = results.num_terminated + results.num_errors < len(results)
    return unfinished or never_created or still_running


@dataclass
class SearchOutcome:
    results: Any  # ray.tune.ResultGrid
    store: Any  # gansearch.tracking.MLflowStore
    table: Any  # pandas.DataFrame from trial_table
    interrupted: bool  # stopped by a signal before every trial ended

    @property
    def scored(self) -> bool:
        return bool(len(self.table)) and bool(self.table["best_fid_proxy"].notna().any())


def restore_tuner(prepared: PreparedSearch):
    from ray import tune

    spec = prepared.spec
    trainable = tune.with_resources(train_gan, {"cpu": spec.trials.cpus, "gpu": spec.trials.gpus})
    if prepared.local_storage is not None:
        from gansearch.restore_repair import repair_checkpoint_references

        repair_checkpoint_references(Path(prepared.experiment_dir))
    # Errored trials stay errored: their error is usually in the config, and rerunning would repeat it.
    return tune.Tuner.restore(prepared.experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
