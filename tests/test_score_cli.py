"""gansearch proxy score and gansearch sample on folders, archives and checkpoints."""

import json
import tarfile
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from gansearch.cli import main
from gansearch.checkpoint import save_generator
from gansearch.training import GANConfig, GANTrainer


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, image_folder):
    from gansearch.data import load_split

    trainer = GANTrainer(GANConfig(batch_size=16, z_dim=8, g_width=4, d_width=4), load_split(image_folder, "train", cache_dir=tmp_path_factory.mktemp("c")).images)
    trainer.train_epoch()
    folder = tmp_path_factory.mktemp("checkpoint")
    save_generator(folder / "generator.pt", trainer)
    return folder


def score(args, capsys):
    code = main(["proxy", "score", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_score_folder_json(image_folder, random_feature_weights, capsys):
    code, out, _ = score([str(image_folder / "test"), "--data", str(image_folder), "--feature-weights", str(random_feature_weights), "--json"], capsys)
    result = json.loads(out)
    assert code == 0
    assert result["n_samples"] == 24
    assert result["fid_proxy"] > 0
    assert "kid_proxy" in result
    assert "fid" not in result


def test_score_archive_matches_folder(image_folder, random_feature_weights, tmp_path, capsys):
    archive = tmp_path / "test.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(image_folder / "test", arcname="test")
    common = ["--data", str(image_folder), "--feature-weights", str(random_feature_weights), "--json"]

    _, from_folder, _ = score([str(image_folder / "test"), *common], capsys)
    _, from_archive, _ = score([str(archive), *common], capsys)

    assert json.loads(from_folder)["fid_proxy"] == pytest.approx(json.loads(from_archive)["fid_proxy"])


def test_score_checkpoint(checkpoint_dir, image_folder, random_feature_weights, capsys):
    code, out, _ = score([str(checkpoint_dir), "--n", "30", "--data", str(image_folder), "--feature-weights", str(random_feature_weights)], capsys)
    assert code == 0
    assert "fid_proxy:" in out
    assert "n_samples: 30" in out


def test_score_empty_folder(tmp_path, capsys):
    code, _, err = score([str(tmp_path)], capsys)
    assert code == 2
    assert "contains no images" in err


def test_score_wrong_size_images(tmp_path, capsys):
    Image.new("RGB", (28, 28)).save(tmp_path / "a.png")
    code, _, err = score([str(tmp_path)], capsys)
    assert code == 2
    assert "a.png is 28x28 RGB; expected 32x32 RGB" in err


def test_score_n_above_folder_size(image_folder, capsys):
    code, _, err = score([str(image_folder / "test"), "--n", "100"], capsys)
    assert code == 2
    assert "--n 100 is larger than the 24 images" in err


def test_score_missing_inception_weights(image_folder, random_feature_weights, tmp_path, capsys):
    args = [str(image_folder / "test"), "--data", str(image_folder), "--feature-weights", str(random_feature_weights)]
    code, _, err = score([*args, "--inception-weights", str(tmp_path / "missing.pth")], capsys)
    assert code == 2
    assert "missing.pth' not found" in err
    assert "torch-fidelity" in err


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """Inception-v3 FID weights of the right architecture from a random initialisation."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    torch.manual_seed(0)
    with mock.patch.object(fidelity, "load_state_dict_from_url", return_value={}), mock.patch.object(
        fidelity.FeatureExtractorInceptionV3, "load_state_dict"
    ):
        model = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(model.state_dict(), path)
    return path


def test_standard_fid_with_weights_file(image_folder, random_feature_weights, random_inception_weights, capsys, monkeypatch):
    monkeypatch.setenv("GANSEARCH_INCEPTION_WEIGHTS", str(random_inception_weights))
    code, out, _ = score([str(image_folder / "test"), "--data", str(image_folder), "--feature-weights", str(random_feature_weights), "--json"], capsys)
    result = json.loads(out)
    assert code == 0
    assert np.isfinite(result["fid"])
    assert result["fid"] >= 0


def test_sample_writes_grid(checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(checkpoint_dir), "--n", "16", "--seed", "3", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (2 + 8 * 34, 2 + 2 * 34)


def test_sample_rejects_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "generator.pt"
    bad.write_bytes(b"junk")
    assert main(["sample", str(bad), "--out", str(tmp_path / "g.png")]) == 2
    assert "generator.pt' is corrupt" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_score_rejects_unknown_device(image_folder, capsys):
    code, _, err = score([str(image_folder / "test"), "--device", "bogus"], capsys)
    assert code == 2
    assert "--device 'bogus' is invalid" in err
