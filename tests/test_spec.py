"""Search spec validation: every fault names the key and the value, before Ray starts."""

from pathlib import Path

import pytest

from gansearch.cli import main
from gansearch.spec import LogUniform, SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
name: demo
search_space:
  lr_g: {type: loguniform, low: 1e-5, high: 1e-3}
scheduler: {type: asha, max_epochs: 10, grace_period: 2}
trials: {num_samples: 4}
"""


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["lr_beta.yaml", "smoke.yaml"])
def test_shipped_specs_are_valid(name):
    spec = load_spec(REPO / "search_spaces" / name)
    assert spec.metric == "fid_proxy"
    assert spec.search_space


def test_exponent_without_dot_is_a_number(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    domain = spec.search_space["lr_g"]
    assert isinstance(domain, LogUniform)
    assert domain.low == pytest.approx(1e-5)
    assert isinstance(domain.high, float)


def test_name_defaults_to_file_stem(tmp_path):
    text = MINIMAL.replace("name: demo\n", "")
    assert load_spec(write(tmp_path, text, "my_search.yaml")).name == "my_search"


def test_default_point_is_dcgan(tmp_path):
    assert load_spec(write(tmp_path, MINIMAL)).default_point() == {"lr_g": 2e-4}


CASES = [
    ("unknown top-level key", MINIMAL + "shedular: {}\n", r"shedular: unknown key"),
    ("unknown nested key", MINIMAL.replace("grace_period: 2", "grace_period: 2, patience: 3"), r"scheduler.patience: unknown key"),
    ("reversed range", MINIMAL.replace("low: 1e-5, high: 1e-3", "low: 1e-3, high: 1e-5"), r"search_space.lr_g: low \(0.001\) must be below high"),
    ("empty range", MINIMAL.replace("low: 1e-5, high: 1e-3", "low: 1e-3, high: 1e-3"), r"must be below high"),
    ("loguniform at zero", MINIMAL.replace("low: 1e-5", "low: 0"), r"search_space.lr_g.low: .*greater than 0 \(got 0\)"),
    ("wrong type", MINIMAL.replace("num_samples: 4", "num_samples: many"), r"trials.num_samples: .*integer.*\(got 'many'\)"),
    ("grace above max", MINIMAL.replace("grace_period: 2", "grace_period: 20"), r"grace_period \(20\) must not exceed max_epochs \(10\)"),
    ("unsearchable key", MINIMAL.replace("lr_g: {", "lr: {"), r"'lr' is not searchable"),
    ("unknown domain type", MINIMAL.replace("type: loguniform", "type: normal"), r"search_space.lr_g"),
    ("float range for integer", MINIMAL.replace("scheduler:", "  n_disc: {type: uniform, low: 1, high: 3}\nscheduler:"), r"'n_disc' is an integer setting"),
    ("unknown train setting", MINIMAL + "train: {lr: 0.1}\n", r"train: unknown setting 'lr'"),
    ("invalid train value", MINIMAL + "train: {beta1: 1.5}\n", r"beta1=1.5 is invalid"),
    ("key in train and space", MINIMAL + "train: {lr_g: 0.001}\n", r"lr_g appear in both train and search_space"),
    ("default outside range", MINIMAL.replace("low: 1e-5, high: 1e-3", "low: 1e-3, high: 1e-2"), r"DCGAN default lr_g=0.0002 lies outside"),
    ("missing scheduler", MINIMAL.replace("scheduler: {type: asha, max_epochs: 10, grace_period: 2}\n", ""), r"scheduler: required key is missing"),
    ("bad metric", MINIMAL + "metric: accuracy\n", r"metric: .*'fid_proxy' or 'kid_proxy'"),
    ("gpu count not whole", MINIMAL.replace("num_samples: 4", "num_samples: 4, gpus: 1.5"), r"trials.gpus: a GPU count above 1 must be whole"),
]


@pytest.mark.parametrize("label,text,message", CASES, ids=[case[0] for case in CASES])
def test_invalid_spec_names_key(tmp_path, label, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, text))


def test_not_yaml(tmp_path):
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "a: [1, 2"))


def test_top_level_list(tmp_path):
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "absent.yaml")


def test_overrides_are_validated(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert load_spec(path, {"trials.num_samples": 9}).trials.num_samples == 9
    with pytest.raises(SpecError, match=r"grace_period \(2\) must not exceed max_epochs \(1\)"):
        load_spec(path, {"scheduler.max_epochs": 1})


def test_validate_command_reports_errors(tmp_path, capsys):
    bad = write(tmp_path, MINIMAL.replace("low: 1e-5", "low: -1"))
    assert main(["validate", str(bad)]) == 2
    assert "search_space.lr_g.low" in capsys.readouterr().err

    good = write(tmp_path, MINIMAL, "good.yaml")
    assert main(["validate", str(good)]) == 0
    assert "valid search 'demo'" in capsys.readouterr().out


def test_run_rejects_bad_spec_before_ray(tmp_path, capsys):
    import ray

    bad = write(tmp_path, MINIMAL + "typo: 1\n")
    assert main(["run", str(bad), "--storage", str(tmp_path / "results")]) == 2
    assert "typo: unknown key" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()


def test_run_rejects_missing_data_before_ray(tmp_path, capsys):
    import ray

    spec = write(tmp_path, MINIMAL)
    assert main(["run", str(spec), "--data", str(tmp_path / "missing"), "--storage", str(tmp_path / "results")]) == 2
    assert "missing' does not exist" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_amp_off_is_a_string(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + "train: {amp: off}\n"))
    assert spec.train["amp"] == "off"


def test_override_into_empty_section(tmp_path):
    text = MINIMAL.replace("trials: {num_samples: 4}", "trials:\n  num_samples: 4\nmetrics:")
    assert load_spec(write(tmp_path, text), {"metrics.n_samples": 100}).metrics.n_samples == 100


def test_override_into_scalar_section(tmp_path):
    text = MINIMAL.replace("scheduler: {type: asha, max_epochs: 10, grace_period: 2}", "scheduler: asha")
    with pytest.raises(SpecError, match="cannot override scheduler.max_epochs"):
        load_spec(write(tmp_path, text), {"scheduler.max_epochs": 3})


@pytest.mark.parametrize("domain,message", [
    ("beta1: {type: uniform, low: 0.0, high: 1.5}", r"search_space.beta1 reaches beta1=1.5 is invalid"),
    ("batch_size: {type: randint, low: 1, high: 64}", r"search_space.batch_size reaches batch_size=1 is invalid"),
    ("n_disc: {type: choice, values: [1, 2.5]}", r"n_disc=2.5 is invalid: it must be a whole number"),
    ("lr_d: {type: uniform, low: 0.0001, high: .inf}", r"search_space.lr_d.high"),
])
def test_search_range_outside_setting_rules(tmp_path, domain, message):
    text = MINIMAL.replace("scheduler:", f"  {domain}\nscheduler:")
    text += "searcher: {start_from_defaults: false}\n"
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, text))


def test_fractional_batch_size_in_train(tmp_path):
    with pytest.raises(SpecError, match="batch_size=64.5 is invalid: it must be a whole number"):
        load_spec(write(tmp_path, MINIMAL + "train: {batch_size: 64.5}\n"))
