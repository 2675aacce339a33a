"""The exceptions that mean bad user input: the CLI prints their message without a traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """An invalid command-line value, such as a negative count or a wrong file suffix."""


def user_errors() -> tuple[type[Exception], ...]:
    from gansearch.checkpoint import CheckpointError
    from gansearch.data import DataError
    from gansearch.metrics.feature_net import FeatureNetError
    from gansearch.metrics.frechet import MetricError
    from gansearch.metrics.standard_fid import StandardFIDUnavailable
    from gansearch.resume import ResumeError
    from gansearch.search import SearchError
    from gansearch.spec import SpecError
    from gansearch.trials import ExperimentNotFound

    return (
        UsageError, CheckpointError, DataError, FeatureNetError, MetricError, StandardFIDUnavailable,
        ResumeError, SearchError, SpecError, ExperimentNotFound,
    )
