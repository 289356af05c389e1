"""pdiff.autoencoder: shapes, normaliser, and reconstructions that keep the snapshots' accuracy."""

from __future__ import annotations

import pytest
import torch

from pdiff import AEConfig
from pdiff.autoencoder import Normalizer, ParameterAutoencoder, train_autoencoder

TINY_AE = AEConfig(latent_dim=32, channels=(16, 32, 64, 64), steps=300)


@pytest.mark.parametrize("n_params", [394, 1000, 2048])
def test_shapes(n_params):
    ae = ParameterAutoencoder(n_params, TINY_AE)
    assert ae.length % 16 == 0 and ae.length >= n_params
    x = torch.randn(3, n_params)
    z = ae.encode(x)
    assert z.shape == (3, 32)
    assert ae.decode(z).shape == (3, n_params)
    assert ae(x).shape == (3, n_params)


def test_training_pass_is_noisy_and_eval_path_is_not():
    ae = ParameterAutoencoder(100, AEConfig(latent_dim=8, channels=(8, 8), input_noise=0.0, latent_noise=0.5))
    x = torch.randn(2, 100)
    torch.manual_seed(0)
    a = ae(x)
    b = ae(x)
    assert not torch.equal(a, b)  # latent noise
    assert torch.equal(ae.decode(ae.encode(x)), ae.decode(ae.encode(x)))


def test_normalizer_inverse():
    snaps = torch.randn(20, 50) * torch.linspace(0.01, 3, 50) + torch.linspace(-2, 2, 50)
    norm = Normalizer(snaps)
    normed = norm(snaps)
    torch.testing.assert_close(normed.mean(0), torch.zeros(50), rtol=0, atol=1e-5)
    assert norm.scale.numel() == 1  # one global scale
    torch.testing.assert_close(norm.inverse(normed), snaps, rtol=0, atol=1e-5)
    constant = Normalizer(torch.ones(4, 3))  # no spread at all: no division by zero
    assert torch.isfinite(constant(torch.ones(1, 3))).all()


def test_reconstruction_keeps_accuracy(collected, evaluator):
    c, data = collected.collection, collected.data
    losses = []
    ae = train_autoencoder(c.snapshots, TINY_AE, seed=0, on_step=lambda s, l: losses.append((s, l)))
    assert len(losses) == TINY_AE.steps and losses[0][0] == 0
    assert len(ae.losses) == TINY_AE.steps
    latents = ae.encode(c.snapshots)
    assert latents.shape == (len(c.snapshots), TINY_AE.latent_dim)
    decoded = ae.decode(latents)
    assert decoded.shape == c.snapshots.shape and decoded.device.type == "cpu"

    # The decoder reproduces each snapshot better than the snapshots' mean does:
    # it has learnt the variation, not only the centre.
    err = (decoded - c.snapshots).pow(2).mean()
    err_of_mean = (c.snapshots.mean(0) - c.snapshots).pow(2).mean()
    assert err < 0.5 * err_of_mean

    scores = evaluator.score(decoded, data)
    orig, rec = 100 * c.scores.test_acc.mean(), 100 * scores.test_acc.mean()
    assert abs(float(rec - orig)) <= 1.0, (float(orig), float(rec))


def test_training_is_seeded(collected):
    snaps = collected.collection.snapshots[:8]
    cfg = AEConfig(latent_dim=16, channels=(16, 16), steps=5)
    a, b = train_autoencoder(snaps, cfg, seed=1), train_autoencoder(snaps, cfg, seed=1)
    assert a.losses == b.losses
    assert torch.equal(a.encode(snaps), b.encode(snaps))
