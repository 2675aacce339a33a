"""The DCGAN models and the plain-PyTorch loop, with no Ray involved."""

import math

import numpy as np
import pytest
import torch

from gansearch.checkpoint import CheckpointError, load_checkpoint_state, load_generator, save_generator, save_state
from gansearch.models import EMA, Discriminator, Generator
from gansearch.trainable import DivergenceMonitor, TrialSettings
from gansearch.training import EpochStats, GANConfig, GANTrainer, fixed_noise

SMALL = dict(batch_size=16, z_dim=8, g_width=4, d_width=4)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(96, 3, 32, 32), dtype=np.uint8)


def test_generator_maps_noise_to_images():
    G = Generator(z_dim=100, width=8)
    out = G(torch.randn(5, 100))
    assert out.shape == (5, 3, 32, 32)
    assert out.min() >= -1
    assert out.max() <= 1
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())


def test_discriminator_returns_one_logit_per_image():
    D = Discriminator(width=8)
    logits = D(torch.randn(5, 3, 32, 32))
    assert logits.shape == (5,)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in D.modules())


def test_defaults_are_dcgan_paper():
    config = GANConfig()
    assert (config.lr_g, config.lr_d, config.beta1, config.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    assert (config.batch_size, config.z_dim, config.g_width, config.d_width) == (128, 100, 64, 64)
    assert (config.n_disc, config.label_smoothing, config.ema) == (1, 0.0, 0.0)


@pytest.mark.parametrize("field,value", [("lr_g", 0.0), ("beta1", 1.0), ("n_disc", 0), ("ema", 1.0), ("label_smoothing", 0.6), ("amp", "fp8")])
def test_invalid_config_names_field(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        GANConfig(**{field: value})


def test_epoch_reports_finite_means(images):
    trainer = GANTrainer(GANConfig(**SMALL), images)
    stats = trainer.train_epoch()

    assert trainer.epoch == 1
    assert stats.finite
    assert 0 < stats.d_real < 1
    assert 0 < stats.d_fake < 1
    assert stats.images_per_s > 0


def test_training_changes_both_networks(images):
    trainer = GANTrainer(GANConfig(**SMALL), images)
    g_before = [p.clone() for p in trainer.G.parameters()]
    d_before = [p.clone() for p in trainer.D.parameters()]
    trainer.train_epoch()
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, trainer.D.parameters()))


def test_n_disc_takes_fewer_g_steps(images):
    one = GANTrainer(GANConfig(**SMALL, n_disc=1), images)
    three = GANTrainer(GANConfig(**SMALL, n_disc=3), images)
    one.train_epoch()
    three.train_epoch()
    # Adam's step counter counts optimizer steps: 6 batches give 6 D steps, and 6 or 2 G steps.
    g_steps = lambda t: int(next(iter(t.opt_g.state.values()))["step"])  # noqa: E731
    d_steps = lambda t: int(next(iter(t.opt_d.state.values()))["step"])  # noqa: E731
    assert (d_steps(one), g_steps(one)) == (6, 6)
    assert (d_steps(three), g_steps(three)) == (6, 2)


def test_ema_tracks_generator(images):
    trainer = GANTrainer(GANConfig(**SMALL, ema=0.5), images)
    trainer.train_epoch()
    ema_weight = next(trainer.G_ema.model.parameters())
    g_weight = next(trainer.G.parameters())
    assert not torch.equal(ema_weight, g_weight)
    assert trainer.sampler is trainer.G_ema.model


def test_ema_update_formula():
    G = Generator(z_dim=4, width=2)
    ema = EMA(G, decay=0.9)
    before = next(ema.model.parameters()).clone()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    ema.update(G)
    torch.testing.assert_close(next(ema.model.parameters()), 0.9 * before + 0.1 * next(G.parameters()))


def test_same_seed_same_weights(images):
    a = GANTrainer(GANConfig(**SMALL, seed=7), images)
    b = GANTrainer(GANConfig(**SMALL, seed=7), images)
    a.train_epoch()
    b.train_epoch()
    for p, q in zip(a.G.parameters(), b.G.parameters()):
        assert torch.equal(p, q)


def test_generate_uses_eval_mode_and_fixed_noise(images):
    trainer = GANTrainer(GANConfig(**SMALL), images)
    trainer.train_epoch()
    z = fixed_noise(8, SMALL["z_dim"])
    first = trainer.generate(z)
    second = trainer.generate(z)
    assert torch.equal(first, second)
    assert trainer.G.training
    assert torch.equal(fixed_noise(8, 8), fixed_noise(8, 8))


def test_absurd_lr_gives_non_finite_stats(images):
    trainer = GANTrainer(GANConfig(**SMALL, lr_d=1e30, lr_g=1e30), images)
    stats = trainer.train_epoch()
    assert not stats.finite
    assert math.isnan(stats.d_loss)


def make_stats(d_real, d_fake, d_loss=1.0):
    return EpochStats(d_loss=d_loss, g_loss=1.0, d_real=d_real, d_fake=d_fake, images_per_s=1.0)


def test_monitor_flags_nan_loss():
    monitor = DivergenceMonitor(TrialSettings(data="cifar10", max_epochs=5))
    assert monitor.check(make_stats(0.5, 0.5, d_loss=float("nan"))) == "non-finite loss"


def test_monitor_needs_k_saturated_epochs_in_a_row():
    monitor = DivergenceMonitor(TrialSettings(data="cifar10", max_epochs=9, saturation_epochs=2))
    saturated, healthy = make_stats(0.995, 0.005), make_stats(0.8, 0.2)

    assert monitor.check(saturated) is None
    assert monitor.check(healthy) is None
    assert monitor.check(saturated) is None
    assert monitor.check(saturated).startswith("D saturated for 2 epochs")


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_is_bit_exact(images, tmp_path, ema):
    config = GANConfig(**SMALL, ema=ema, n_disc=2)
    straight = GANTrainer(config, images)
    for _ in range(3):
        straight.train_epoch()

    first = GANTrainer(config, images)
    first.train_epoch()
    save_state(tmp_path / "state.pt", first.state_dict())
    # Disturb every global RNG, as a fresh process would have a different state.
    torch.manual_seed(999)
    np.random.seed(999)

    resumed = GANTrainer(config, images)
    resumed.load_state_dict(load_checkpoint_state(tmp_path / "state.pt"))
    for _ in range(2):
        resumed.train_epoch()

    assert resumed.epoch == 3
    for name, model in (("G", "G"), ("D", "D")):
        for (key, a), b in zip(getattr(straight, model).state_dict().items(), getattr(resumed, model).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} differs after resume"
    if ema:
        for a, b in zip(straight.G_ema.model.parameters(), resumed.G_ema.model.parameters()):
            assert torch.equal(a, b)


def test_generator_file_round_trip(images, tmp_path):
    trainer = GANTrainer(GANConfig(**SMALL, ema=0.9), images)
    trainer.train_epoch()
    save_generator(tmp_path / "generator.pt", trainer)

    G, metadata = load_generator(tmp_path / "generator.pt")
    z = fixed_noise(4, SMALL["z_dim"])
    assert metadata["ema"] is True
    assert metadata["epoch"] == 1
    torch.testing.assert_close(G(z), trainer.generate(z))


def test_corrupt_checkpoint_names_file(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="state.pt' is corrupt"):
        load_checkpoint_state(path)


def test_foreign_checkpoint_names_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="other.pt' is not a gansearch training state"):
        load_checkpoint_state(path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "gansearch-state-v1", "obj": object()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint_state(path)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_state(path, {"epoch": 1})

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("gansearch.storage.os.replace", explode)
    with pytest.raises(OSError, match="disk full"):
        save_state(path, {"epoch": 2})

    assert load_checkpoint_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_n_disc_spans_epoch_boundaries(images):
    # 96 images in batches of 16 give 6 D steps an epoch; with n_disc=4 the G steps fall on
    # D steps 4, 8 and 12, so the second epoch contains two of them.
    trainer = GANTrainer(GANConfig(**SMALL, n_disc=4), images)
    first, second = trainer.train_epoch(), trainer.train_epoch()
    assert (first.g_steps, second.g_steps) == (1, 2)


def test_epoch_without_g_step_is_finite(images):
    trainer = GANTrainer(GANConfig(**SMALL, n_disc=10), images)
    stats = trainer.train_epoch()
    assert stats.g_steps == 0
    assert math.isnan(stats.g_loss)
    assert stats.finite


def test_generator_file_with_missing_keys(tmp_path):
    path = tmp_path / "generator.pt"
    torch.save({"format": "gansearch-generator-v1", "G": {}}, path)
    with pytest.raises(CheckpointError, match="generator.pt' is damaged or incomplete"):
        load_generator(path)
