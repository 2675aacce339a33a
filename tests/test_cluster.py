"""cluster.yaml under Ray's own validation, and a real search on a two-node Ray cluster on this machine."""

import copy
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml

from gansearch.resume import resume_trial
from gansearch.search import prepare_search, run_search
from gansearch.spec import validate_document
from gansearch.tracking import TAG_ROLE, MLflowStore
from gansearch.trials import trial_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_config))
    validate_config(prepared)  # the check 'ray up' runs; raises on any schema error


def test_cluster_yaml_settings(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    workers = [node for name, node in types.items() if name != cluster_config["head_node_type"]]
    setup = " ".join(cluster_config["setup_commands"])
    head_start = " ".join(cluster_config["head_start_ray_commands"])

    assert cluster_config["provider"]["type"] == "aws"
    assert head["resources"].get("GPU", 0) == 0
    assert len(workers) == 1
    assert workers[0]["resources"]["GPU"] == 1
    assert workers[0]["min_workers"] == 0
    assert workers[0]["max_workers"] >= 1
    assert f"ray[default,tune]=={ray.__version__}" in setup
    assert "-e /home/ubuntu/gansearch" in setup
    assert "ray start --head" in head_start
    assert "mlflow server" in head_start
    assert "--host $(hostname -I" in head_start
    assert "--backend-store-uri sqlite:////home/ubuntu/" in head_start
    assert "--artifacts-destination s3://" in head_start


# ----------------------------------------------------------------------------- two nodes, one machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server on 127.0.0.1 and a free port, with its store in a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        process.terminate()
        raise RuntimeError(f"MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_search_spans_two_nodes(two_node_cluster, mlflow_server, tmp_path, image_folder, random_feature_weights):
    spec = {
        "name": "two_nodes",
        "train": {"batch_size": 16, "z_dim": 8, "g_width": 4, "d_width": 4},
        "search_space": {"lr_g": {"type": "loguniform", "low": 1e-5, "high": 1e-2}},
        "metrics": {"n_samples": 40, "feature_weights": str(random_feature_weights)},
        "scheduler": {"type": "fifo", "max_epochs": 2},
        "trials": {"num_samples": 2, "max_concurrent": 2, "cpus": 1},
        "tracking": {"mlflow_uri": mlflow_server},
    }
    prepared = prepare_search(
        validate_document(spec, "test"), yaml.safe_dump(spec), data=str(image_folder),
        storage=str(tmp_path / "shared"), address=two_node_cluster.address,
    )
    outcome = run_search(prepared)

    node_ids = set()
    for result_file in Path(prepared.experiment_dir).glob("train_gan_*/result.json"):
        node_ids |= {json.loads(line)["node_id"] for line in result_file.read_text().splitlines()}
    assert len(node_ids) == 2, f"trials ran on {node_ids}"
    assert (outcome.table["status"] == "completed").all()

    store = MLflowStore(mlflow_server, "two_nodes")
    runs = store.client.search_runs([store.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(trial_runs) == 2
    assert {r.data.tags["gansearch.node_id"] for r in trial_runs} == node_ids
    for run in trial_runs:
        assert len(store.client.get_metric_history(run.info.run_id, "fid_proxy")) == 2

    results, run_dir = resume_trial(prepared.experiment_dir, epochs=3, address=two_node_cluster.address)
    assert results.num_errors == 0
    resumed = trial_table(prepared.experiment_dir)
    assert (resumed["run"] == run_dir.name).sum() == 1
    assert len([r for r in store.client.search_runs([store.experiment_id]) if r.data.tags.get(TAG_ROLE) == "resume"]) == 1
