"""The trial table of a finished or running search, read from its experiment folder.

Each Tune trial folder contains ``params.json`` (the trial config), ``result.json`` (one JSON line per
reported epoch) and, for a trial that raised, ``error.txt``. The table needs neither Ray nor MLflow.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from gansearch.search import SEARCH_RECORD
from gansearch.trainable import SETTINGS_KEY

logger = logging.getLogger(__name__)

RESUME_PREFIX = "resume-"  # folders of 'gansearch resume' runs inside an experiment folder
COLUMNS = ("trial_id", "run", "status", "epochs", "best_fid_proxy", "best_epoch", "last_fid_proxy", "end_reason")


class ExperimentNotFound(FileNotFoundError):
    """A path that is not a gansearch experiment folder."""


# The small files that describe trials; checkpoint weights are never copied.
MIRRORED_NAMES = ("gansearch.json", "spec.yaml", "params.json", "result.json", "error.txt", "metrics.json")


def mirror_experiment(uri: str, filesystem=None) -> Path:
    """Copy the small files of a remote experiment (s3://, gs://) into a local folder and return it.

    The mirror keeps the remote layout, so ``mirror / relative`` corresponds to ``uri / relative``.
    """
    import tempfile

    import pyarrow.fs

    if filesystem is None:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    else:
        root = uri
    root = root.rstrip("/")
    mirror = Path(tempfile.mkdtemp(prefix="gansearch-mirror-")) / Path(root).name
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    except (OSError, FileNotFoundError) as error:
        raise ExperimentNotFound(f"cannot list experiment {uri!r}: {error}") from error

    for info in infos:
        name = info.path.rsplit("/", 1)[-1]
        if info.type != pyarrow.fs.FileType.File:
            continue
        if name not in MIRRORED_NAMES and not (name.startswith("experiment_state-") and name.endswith(".json")):
            continue
        target = mirror / info.path[len(root) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as stream:
            target.write_bytes(stream.read())
    return mirror


def resolve_experiment(experiment: str | Path, storage: str | Path = "./results") -> Path:
    """Return the experiment folder for a path, or for a name under ``storage``.

    A remote experiment (``s3://...``) is mirrored into a local folder first.
    """
    if "://" in str(experiment) and not str(experiment).startswith("file://"):
        experiment = mirror_experiment(str(experiment))
    elif "://" in str(storage) and not str(storage).startswith("file://"):
        experiment = mirror_experiment(f"{str(storage).rstrip('/')}/{experiment}")
    for candidate in (Path(experiment), Path(storage) / str(experiment)):
        if (candidate / SEARCH_RECORD).is_file():
            return candidate.resolve()
    raise ExperimentNotFound(
        f"no gansearch experiment at {str(experiment)!r} (nor under {str(storage)!r}): "
        f"expected a folder with {SEARCH_RECORD}, as 'gansearch run' writes into STORAGE/NAME"
    )


def read_search_record(experiment_dir: Path) -> dict:
    path = Path(experiment_dir) / SEARCH_RECORD
    try:
        record = json.loads(path.read_text())
        int(record["spec"]["scheduler"]["max_epochs"])
    except (OSError, json.JSONDecodeError) as error:
        raise ExperimentNotFound(f"search record {str(path)!r} is unreadable: {error}") from error
    except (KeyError, TypeError, ValueError) as error:
        raise ExperimentNotFound(f"search record {str(path)!r} is damaged or foreign: missing {error}") from error
    return record


def read_results(trial_dir: Path) -> list[dict]:
    """Return the trial's reported results, skipping a final line cut short by a crash."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("skipping an incomplete line in %s", path)
            continue
        if isinstance(result, dict):
            results.append(result)
    return results


def tune_statuses(run_dir: Path) -> dict[str, str]:
    """Return Tune's status of each trial (RUNNING, TERMINATED, ERROR...) from the newest experiment state."""
    states = sorted(run_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        document = json.loads(states[-1].read_text())
        trials = [json.loads(entry[0]) for entry in document["trial_data"]]
    except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
        logger.warning("cannot read Tune's trial statuses from %s: %s", states[-1], error)
        return {}
    return {trial["trial_id"]: trial.get("status", "") for trial in trials}


UNFINISHED = {"PENDING", "RUNNING", "PAUSED"}


def trial_row(trial_dir: Path, max_epochs: int, statuses: dict[str, str] | None = None) -> dict | None:
    """Return one table row for a trial folder; ``statuses`` maps trial ids to Tune's statuses."""
    params_file = trial_dir / "params.json"
    if not params_file.is_file():
        return None
    try:
        config = json.loads(params_file.read_text())
    except json.JSONDecodeError as error:
        logger.warning("skipping trial folder %s: params.json is unreadable (%s)", trial_dir, error)
        return None
    if not isinstance(config, dict):
        return None
    settings = config.pop(SETTINGS_KEY, {})
    max_epochs = int(settings.get("max_epochs", max_epochs))
    results = read_results(trial_dir)
    scored = [r for r in results if not r.get("diverged") and math.isfinite(r.get("fid_proxy", math.inf))]
    best = min(scored, key=lambda r: r["fid_proxy"], default=None)
    last = results[-1] if results else {}
    trial_id = last.get("trial_id") or trial_dir.name.rsplit("_", 1)[-1]
    tune_status = (statuses or {}).get(trial_id, "")

    status, reason = trial_status(trial_dir, last, max_epochs, tune_status)
    if tune_status in UNFINISHED:
        status, reason = "unfinished", "the search stopped before this trial ended; continue it with 'gansearch run --resume'"
    row = {
        "trial_id": last.get("trial_id") or trial_dir.name,
        "status": status,
        "epochs": int(last.get("epoch", 0)),
        "best_fid_proxy": best["fid_proxy"] if best else math.nan,
        "best_epoch": int(best["epoch"]) if best else None,
        "last_fid_proxy": last.get("fid_proxy", math.nan),
        "end_reason": reason,
        "trial_dir": str(trial_dir),
    }
    row.update(config)
    return row


def trial_status(trial_dir: Path, last: dict, max_epochs: int, tune_status: str = "") -> tuple[str, str]:
    from gansearch.tracking import trial_ending

    error_file = trial_dir / "error.txt"
    # A trial retried after a worker died keeps its error.txt, so Tune's status decides when known.
    if tune_status:
        errored = tune_status == "ERROR"
    else:
        errored = error_file.is_file() and last.get("epoch", 0) < max_epochs
    if errored:
        lines = error_file.read_text().strip().splitlines() if error_file.is_file() else []
        return "errored", lines[-1] if lines else "the trial raised an exception"
    return trial_ending(last, max_epochs, errored=False)


def trial_dirs(experiment_dir: Path) -> list[tuple[Path, str]]:
    """Return (trial folder, run) pairs: the search's own trials, then those of ``gansearch resume`` runs."""
    found = []
    for child in sorted(path for path in experiment_dir.iterdir() if path.is_dir()):
        if child.name.startswith(RESUME_PREFIX):
            found += [(grandchild, child.name) for grandchild in sorted(child.iterdir()) if grandchild.is_dir()]
        else:
            found.append((child, "search"))
    return found


def trial_table(experiment_dir: str | Path) -> pd.DataFrame:
    """Return one row per trial, best ``fid_proxy`` first; diverged and errored trials last."""
    experiment_dir = Path(experiment_dir)
    record = read_search_record(experiment_dir)
    max_epochs = int(record["spec"]["scheduler"]["max_epochs"])

    rows = []
    statuses = {}
    for trial_dir, run in trial_dirs(experiment_dir):
        if trial_dir.parent not in statuses:
            statuses[trial_dir.parent] = tune_statuses(trial_dir.parent)
        row = trial_row(trial_dir, max_epochs, statuses[trial_dir.parent])
        if row is not None:
            rows.append({"run": run, **row})
    if not rows:
        return pd.DataFrame(columns=list(COLUMNS))

    table = pd.DataFrame(rows)
    searched = list(record["spec"].get("search_space", {}))
    ordered = list(COLUMNS) + [c for c in searched if c in table] + [
        c for c in table.columns if c not in COLUMNS and c not in searched and c != "trial_dir"
    ] + ["trial_dir"]
    table = table[ordered]
    failed = table["status"].isin(["diverged", "errored"])
    table = table.assign(_failed=failed).sort_values(["_failed", "best_fid_proxy"], na_position="last")
    return table.drop(columns="_failed").reset_index(drop=True)
