"""Searcher and scheduler variants that keep diverged trials out of their bookkeeping.

A diverged trial reports one last result with ``diverged=1`` and an infinite metric. Optuna must
record it as a failed trial rather than as a value, and ASHA must not count it in a rung, where it
would lower the bar for the trials that follow.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch


def is_diverged(result: dict | None) -> bool:
    return bool(result and result.get("diverged"))


class DivergenceAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records a diverged trial in Optuna as FAILED instead of passing its metric."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not is_diverged(result):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if is_diverged(result):
            super().on_trial_complete(trial_id, result=None, error=True)
        else:
            super().on_trial_complete(trial_id, result=result, error=error)


class DivergenceAwareASHA(AsyncHyperBandScheduler):
    """ASHA that stops a diverged trial at once and leaves its result out of the rungs."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_diverged(result):
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if is_diverged(result):
            self.on_trial_remove(tune_controller, trial)
            return
        super().on_trial_complete(tune_controller, trial, result)


class DivergenceAwareFIFO(FIFOScheduler):
    """FIFO scheduling that stops a diverged trial at once."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_diverged(result):
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)
