"""The search spec: a YAML file that fixes training settings, a search space and how to search it.

Every key is validated here, before Ray starts: unknown keys, wrong types, empty or reversed ranges,
non-positive ``loguniform`` bounds and a grace period above the max epochs all raise ``SpecError``
naming the key and the value. See ``search_spaces/*.yaml`` for annotated examples.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gansearch.training import GANConfig

SEARCHABLE = tuple(field.name for field in fields(GANConfig) if field.name != "amp")
INTEGER_SETTINGS = {"batch_size", "z_dim", "g_width", "d_width", "n_disc", "seed"}


def setting_problem(key: str, value: Any) -> str | None:
    """Return why ``value`` is invalid for the GAN setting ``key``, or None when it is valid."""
    if key in INTEGER_SETTINGS and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"{key}={value!r} is invalid: it must be a whole number"
    if key == "amp" and not isinstance(value, str):
        return f"amp={value!r} is invalid: it must be one of off, bf16, fp16"
    if key not in INTEGER_SETTINGS and key != "amp":
        if not _is_number(value) or not math.isfinite(value):
            return f"{key}={value!r} is invalid: it must be a finite number"
    try:
        GANConfig(**{key: value})
    except ValueError as error:
        return str(error)
    return None


class SpecError(ValueError):
    """An invalid search spec; the message names the file, the key and the value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LogUniform(_Strict):
    type: Literal["loguniform"]
    low: float = Field(gt=0, allow_inf_nan=False, description="lower bound, above 0")
    high: float = Field(gt=0, allow_inf_nan=False, description="upper bound, above low")

    @model_validator(mode="after")
    def _ordered(self) -> "LogUniform":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high


class Uniform(_Strict):
    type: Literal["uniform"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> "Uniform":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high


class RandInt(_Strict):
    """Integers in [low, high], both ends included."""

    type: Literal["randint"]
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> "RandInt":
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Union[float, int, str]] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list) -> list:
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"values contain duplicates: {values}")
        return values

    def contains(self, value: Any) -> bool:
        return value in self.values


def domain_values(domain) -> list:
    """Return the values a domain can reach at its edges: both bounds, or every choice."""
    if isinstance(domain, Choice):
        return list(domain.values)
    return [domain.low, domain.high]


Domain = Annotated[Union[LogUniform, Uniform, RandInt, Choice], Field(discriminator="type")]


class DataSpec(_Strict):
    source: str = Field("cifar10", description="'cifar10' or a folder or archive with train/ and test/")
    subset: int | None = Field(None, ge=1, description="first N images of each class; all when null")


class MetricsSpec(_Strict):
    n_samples: int | None = Field(None, ge=2, description="images scored per epoch; 5000 on a GPU, 1000 on a CPU when null")
    split: Literal["train", "test"] = "train"
    feature_weights: str | None = Field(None, description="feature network weights; the shipped ones when null")


class SearcherSpec(_Strict):
    type: Literal["optuna", "random"] = "optuna"
    seed: int = 0
    start_from_defaults: bool = Field(True, description="evaluate the DCGAN defaults first")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="configs to evaluate before the searcher proposes its own"
    )


class SchedulerSpec(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    max_epochs: int = Field(ge=1)
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = Field(3.0, gt=1)

    @model_validator(mode="after")
    def _grace_within_max(self) -> "SchedulerSpec":
        if self.grace_period > self.max_epochs:
            raise ValueError(
                f"grace_period ({self.grace_period}) must not exceed max_epochs ({self.max_epochs})"
            )
        return self


class TrialsSpec(_Strict):
    num_samples: int = Field(ge=1, description="trials in the search")
    max_concurrent: int | None = Field(
        None, ge=1, description="trials running at once; when null, as many as fit on the cluster when the search starts"
    )
    cpus: float = Field(1.0, gt=0, description="CPUs per trial; also its torch thread count")
    gpus: float = Field(0.0, ge=0, description="GPU fraction per trial, for example 0.25 for four trials to a GPU")
    max_failures: int = Field(0, ge=-1, description="retries of a trial whose worker dies; -1 for no limit")

    @field_validator("gpus")
    @classmethod
    def _gpu_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"a GPU count above 1 must be whole, got {value}")
        return value


class TrackingSpec(_Strict):
    mlflow_uri: str | None = Field(None, description="tracking URI; MLFLOW_TRACKING_URI or a SQLite file in the results when null")
    experiment: str | None = Field(None, description="MLflow experiment name; the search name when null")
    image_every: int = Field(1, ge=1, description="log the sample grid every k epochs")


class CheckpointSpec(_Strict):
    keep_best: int = Field(2, ge=1, description="checkpoints kept per trial, ranked by the metric, plus the latest")


class DivergenceSpec(_Strict):
    saturation_epochs: int = Field(3, ge=1, description="epochs in a row with D saturated before a trial is stopped")
    d_real_min: float = Field(0.99, gt=0, le=1, description="D saturated: mean D(x) at least this")
    d_fake_max: float = Field(0.01, ge=0, lt=1, description="D saturated: mean D(G(z)) at most this")


class SearchSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="experiment name: letters, digits, '.', '_', '-'")
    data: DataSpec = DataSpec()
    train: dict[str, Any] = Field(default_factory=dict, description="fixed GAN settings")
    search_space: dict[str, Domain] = Field(default_factory=dict)
    metric: Literal["fid_proxy", "kid_proxy"] = "fid_proxy"
    mode: Literal["min"] = "min"
    searcher: SearcherSpec = SearcherSpec()
    scheduler: SchedulerSpec
    trials: TrialsSpec
    tracking: TrackingSpec = TrackingSpec()
    checkpoints: CheckpointSpec = CheckpointSpec()
    divergence: DivergenceSpec = DivergenceSpec()
    metrics: MetricsSpec = MetricsSpec()
    storage: str = Field("./results", description="local folder or URI (s3://, gs://) for results")

    @field_validator("train")
    @classmethod
    def _train_keys(cls, train: dict[str, Any]) -> dict[str, Any]:
        known = {field.name for field in fields(GANConfig)}
        for key, value in train.items():
            if key not in known:
                raise ValueError(f"unknown setting {key!r}; valid settings: {', '.join(sorted(known))}")
            problem = setting_problem(key, value)
            if problem:
                raise ValueError(problem)
        return train

    @field_validator("search_space")
    @classmethod
    def _space_keys(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key, domain in space.items():
            if key not in SEARCHABLE:
                raise ValueError(f"{key!r} is not searchable; searchable settings: {', '.join(SEARCHABLE)}")
            if key in INTEGER_SETTINGS and isinstance(domain, (Uniform, LogUniform)):
                raise ValueError(f"{key!r} is an integer setting: use randint or choice, not {domain.type}")
            for value in domain_values(domain):
                problem = setting_problem(key, value)
                if problem:
                    raise ValueError(f"search_space.{key} reaches {problem}")
        return space

    @model_validator(mode="after")
    def _consistent(self) -> "SearchSpec":
        both = sorted(set(self.train) & set(self.search_space))
        if both:
            raise ValueError(f"{', '.join(both)} appear in both train and search_space; keep each in one")
        if self.searcher.start_from_defaults:
            self._check_defaults_in_space()
        self._check_points()
        return self

    def _check_points(self) -> None:
        for index, point in enumerate(self.searcher.points_to_evaluate):
            if set(point) != set(self.search_space):
                raise ValueError(
                    f"searcher.points_to_evaluate[{index}] has keys {sorted(point)}; "
                    f"it needs exactly the search_space keys {sorted(self.search_space)}"
                )
            for key, value in point.items():
                problem = setting_problem(key, value)
                if problem:
                    raise ValueError(f"searcher.points_to_evaluate[{index}]: {problem}")
                if not self.search_space[key].contains(value):
                    raise ValueError(
                        f"searcher.points_to_evaluate[{index}].{key}={value!r} lies outside search_space.{key}"
                    )

    def _check_defaults_in_space(self) -> None:
        defaults = GANConfig()
        for key, domain in self.search_space.items():
            value = getattr(defaults, key)
            if not domain.contains(value):
                raise ValueError(
                    f"searcher.start_from_defaults is on but the DCGAN default {key}={value} lies outside "
                    f"search_space.{key}; widen the range or set start_from_defaults: false"
                )

    def default_point(self) -> dict[str, Any]:
        """Return the DCGAN defaults for the searched settings."""
        defaults = GANConfig().to_dict()
        return {key: defaults[key] for key in self.search_space}

    def initial_points(self) -> list[dict[str, Any]]:
        """Return the configs evaluated before the searcher's own: the defaults, then the listed points."""
        if not self.search_space:
            return []
        points = [self.default_point()] if self.searcher.start_from_defaults else []
        return points + [dict(point) for point in self.searcher.points_to_evaluate]

    def fixed_settings(self) -> dict[str, Any]:
        return GANConfig(**self.train).to_dict()


# PyYAML follows YAML 1.1, which reads 1e-4 (no dot) as a string; this adds YAML 1.2's float form.
_FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _SpecLoader(yaml.SafeLoader):
    pass


# YAML 1.1 also reads yes, no, on and off as booleans, which turns `amp: off` into False; keep
# only YAML 1.2's true and false.
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_PATTERN, list("-+0123456789."))


def parse_yaml(text: str, origin: str) -> dict:
    try:
        document = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise SpecError(f"{origin}: not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise SpecError(f"{origin}: expected a mapping of settings at the top level, got {type(document).__name__}")
    return document


def load_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> SearchSpec:
    """Read, override and validate a spec file; raise SpecError naming the key and value on any fault.

    ``overrides`` maps dotted keys (``trials.num_samples``) to values, as the CLI flags give them.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"search spec {str(path)!r} not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"search spec {str(path)!r} is unreadable: {error}") from error

    document = parse_yaml(text, str(path))
    document.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        _set_dotted(document, dotted, value)
    return validate_document(document, str(path))


def validate_document(document: dict, origin: str) -> SearchSpec:
    try:
        return SearchSpec.model_validate(document)
    except ValidationError as error:
        raise SpecError(f"{origin} is invalid:\n{format_validation_error(error, document)}") from None


def _set_dotted(document: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = document
    for key in parents:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise SpecError(f"cannot override {dotted}: {key} in the spec is {node!r}, not a mapping of settings")
    node[last] = value


def format_validation_error(error: ValidationError, document: dict) -> str:
    """Render pydantic's errors as one line per problem: the dotted key, the value and the rule."""
    lines = []
    for problem in error.errors(include_url=False):
        # Drop the discriminator tag pydantic inserts into the location of tagged unions.
        location = [str(part) for part in problem["loc"] if str(part) not in {"loguniform", "uniform", "randint", "choice"}]
        key = ".".join(location) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against the documented schema"
        elif problem["type"] in {"union_tag_not_found", "union_tag_invalid"}:
            message = "'type' is missing or unknown: use loguniform, uniform, randint or choice"
        elif problem["type"] == "missing":
            message = "required key is missing"
        value = _lookup(document, problem["loc"])
        shown = "" if value is _MISSING or problem["type"] == "missing" else f" (got {value!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


_MISSING = object()


def _lookup(document: Any, location: tuple) -> Any:
    node = document
    for part in location:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and part in {"loguniform", "uniform", "randint", "choice"}:
            continue
        else:
            return _MISSING
    if isinstance(node, float) and math.isnan(node):
        return "nan"
    return node
