"""The FID-proxy scorer: cached real statistics, the generator API, weights checks, standard FID."""

import multiprocessing

import numpy as np
import pytest
import torch

from gansearch.metrics import feature_net
from gansearch.metrics.feature_net import FeatureNetError, load_feature_net
from gansearch.metrics.frechet import MetricError
from gansearch.metrics.proxy import FIDProxy
from gansearch.metrics.reference import load_reference, reference_key
from gansearch.models import Generator


@pytest.fixture()
def network(random_feature_weights):
    return load_feature_net(random_feature_weights)


def test_reference_is_cached_and_reused(image_folder, network, tmp_path):
    net, sha = network
    first = load_reference(image_folder, "train", 40, net, sha, cache_dir=tmp_path)
    second = load_reference(image_folder, "train", 40, net, sha, cache_dir=tmp_path)

    assert not first.from_cache
    assert second.from_cache
    np.testing.assert_array_equal(first.stats.cov, second.stats.cov)
    assert first.features.shape == (40, feature_net.FEATURE_DIM)


def test_reference_key_changes_with_each_input(image_folder, tmp_path):
    base = reference_key(image_folder, "train", 40, "abc")
    assert reference_key(image_folder, "test", 40, "abc") != base
    assert reference_key(image_folder, "train", 41, "abc") != base
    assert reference_key(image_folder, "train", 40, "abd") != base
    assert reference_key(tmp_path, "train", 40, "abc") != base


def test_corrupt_reference_is_rebuilt(image_folder, network, tmp_path):
    net, sha = network
    original = load_reference(image_folder, "train", 40, net, sha, cache_dir=tmp_path)
    cache_file = next((tmp_path / "stats").glob("*.npz"))
    cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])

    rebuilt = load_reference(image_folder, "train", 40, net, sha, cache_dir=tmp_path)

    assert not rebuilt.from_cache
    np.testing.assert_allclose(rebuilt.stats.mean, original.stats.mean)


def _load_in_process(args):
    folder, weights, cache_dir = args
    net, sha = load_feature_net(weights)
    reference = load_reference(folder, "train", 50, net, sha, cache_dir=cache_dir)
    return reference.from_cache, reference.stats.mean.tolist()


def test_concurrent_requests_compute_once(image_folder, random_feature_weights, tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        outcomes = pool.map(_load_in_process, [(image_folder, random_feature_weights, tmp_path)] * 3)

    computed = [not from_cache for from_cache, _ in outcomes]
    assert computed.count(True) == 1
    assert all(mean == outcomes[0][1] for _, mean in outcomes)
    leftovers = [p.name for p in (tmp_path / "stats").iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


def test_n_above_available_images(image_folder, random_feature_weights, tmp_path):
    with pytest.raises(MetricError, match="n_samples 500 is larger than the 72 real images"):
        FIDProxy(image_folder, n_samples=500, feature_weights=random_feature_weights, cache_dir=tmp_path)


def test_score_generator_is_deterministic_and_keeps_mode(image_folder, random_feature_weights, tmp_path):
    scorer = FIDProxy(image_folder, n_samples=60, feature_weights=random_feature_weights, cache_dir=tmp_path)
    torch.manual_seed(0)
    G = Generator(z_dim=8, width=4)
    G.train()

    first = scorer.score_generator(G, z_dim=8)
    torch.manual_seed(123)  # the scoring noise must not depend on the global RNG
    second = scorer.score_generator(G, z_dim=8)

    assert first.fid_proxy == second.fid_proxy
    assert first.fid_proxy > 0
    assert set(first.as_metrics()) == {"fid_proxy", "kid_proxy"}
    assert G.training


def test_real_images_score_below_noise(image_folder, random_feature_weights, tmp_path):
    from gansearch.data import load_split

    scorer = FIDProxy(image_folder, split="train", n_samples=24, feature_weights=random_feature_weights, cache_dir=tmp_path)
    real = load_split(image_folder, "test").images
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)

    assert scorer.score_images(real).fid_proxy < scorer.score_images(noise).fid_proxy


def test_score_images_rejects_bad_shape(image_folder, random_feature_weights, tmp_path):
    scorer = FIDProxy(image_folder, n_samples=10, feature_weights=random_feature_weights, cache_dir=tmp_path)
    with pytest.raises(MetricError, match=r"shape \(N, 3, 32, 32\)"):
        scorer.score_images(np.zeros((4, 3, 64, 64), np.uint8))


def test_missing_weights_file(tmp_path):
    with pytest.raises(FeatureNetError, match="absent.pt' not found"):
        load_feature_net(tmp_path / "absent.pt")


def test_shipped_weights_checksum_is_enforced(monkeypatch):
    path = feature_net.shipped_weights_path()
    if not path.is_file():
        pytest.skip("shipped feature weights are not installed")
    monkeypatch.setattr(feature_net, "shipped_record", lambda: {"sha256": "0" * 64})
    with pytest.raises(FeatureNetError, match="expected 0000"):
        load_feature_net()


def test_shipped_weights_load_and_match_record():
    if not feature_net.shipped_weights_path().is_file():
        pytest.skip("shipped feature weights are not installed")
    network, digest = load_feature_net()
    record = feature_net.shipped_record()
    assert digest == record["sha256"]
    assert record["test_accuracy"] >= 0.85
    assert network.head.in_features >= 128


def test_foreign_weights_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"something": torch.zeros(3)}, path)
    with pytest.raises(FeatureNetError, match="not a gansearch feature network"):
        load_feature_net(path)
