"""Repair of Tune's checkpoint references in an experiment killed mid-search, before Tuner.restore.

Tune deletes checkpoints beyond ``num_to_keep`` as new ones arrive, but writes its experiment state
only every few seconds. When the driver dies by SIGKILL between the two, the saved state can name
a checkpoint that no longer exists, and Tune 2.60 then fails that trial on restore ("does not exist
on storage anymore"). This module points such a trial at its newest complete checkpoint on disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ray import cloudpickle

from gansearch.checkpoint import STATE_FILE
from gansearch.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

PICKLED = "CLOUDPICKLE_FALLBACK"  # how Tune's JSON encoder marks a cloudpickled value


def newest_complete_checkpoint(trial_dir: Path) -> Path | None:
    complete = [
        folder for folder in sorted(trial_dir.glob("checkpoint_*"))
        if (folder / STATE_FILE).is_file() and (folder / "metrics.json").is_file()
    ]
    return complete[-1] if complete else None


def _repair_manager(manager, trial_dir: Path) -> bool:
    """Drop references to missing checkpoints; return True when the manager changed."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    def exists(result) -> bool:
        return result.checkpoint is None or Path(result.checkpoint.path).is_dir()

    latest = manager._latest_checkpoint_result
    if latest is None or exists(latest):
        return False

    manager._checkpoint_results = [result for result in manager._checkpoint_results if exists(result)]
    newest = newest_complete_checkpoint(trial_dir)
    if newest is None:
        manager._latest_checkpoint_result = None
        return True
    metrics = json.loads((newest / "metrics.json").read_text())
    replacement = _TrainingResult(checkpoint=Checkpoint(str(newest)), metrics=metrics)
    manager._checkpoint_results.append(replacement)
    manager._latest_checkpoint_result = replacement
    logger.warning("trial folder %s: the saved state named a deleted checkpoint; continuing from %s", trial_dir, newest.name)
    return True


def repair_checkpoint_references(experiment_dir: Path) -> int:
    """Fix the newest experiment state of a local experiment folder; return how many trials changed."""
    states = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    if not states:
        return 0
    state_file = states[-1]
    document = json.loads(state_file.read_text())

    repaired = 0
    for entry in document.get("trial_data", []):
        trial = json.loads(entry[0])
        runtime = json.loads(entry[1])
        blob = runtime.get("checkpoint_manager")
        if not isinstance(blob, dict) or blob.get("_type") != PICKLED:
            continue
        # The state file is this search's own, written by Tune in this folder, so unpickling it is
        # as safe as Tuner.restore, which does the same.
        manager = cloudpickle.loads(bytes.fromhex(blob["value"]))
        trial_dir = Path(experiment_dir).resolve() / trial.get("relative_logdir", "")
        if _repair_manager(manager, trial_dir):
            runtime["checkpoint_manager"] = {"_type": PICKLED, "value": cloudpickle.dumps(manager).hex()}
            entry[1] = json.dumps(runtime)
            repaired += 1

    if repaired:
        atomic_write_bytes(state_file, json.dumps(document).encode())
    return repaired
