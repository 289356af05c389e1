"""pdiff.autoencoder: shapes, normaliser, and reconstructions that keep the snapshots' accuracy."""

from __future__ import annotations

import pytest
import torch

from pdiff import AEConfig
from pdiff.autoencoder import (AUTOENCODERS, Normalizer, ParameterAutoencoder,
                               autoencoder_name, build_autoencoder, reconstruction_r2, train_autoencoder)
from pdiff.chunked_autoencoder import ChunkedAutoencoder

TINY_AE = AEConfig(latent_dim=32, channels=(32, 64, 64), steps=1500, check_every=50)


@pytest.mark.parametrize("n_params", [394, 1000, 2048])
def test_shapes(n_params):
    ae = ParameterAutoencoder(n_params, TINY_AE)
    assert ae.tokens % 8 == 0 and ae.length == ae.tokens * TINY_AE.token_size >= n_params
    assert ae.tokens * TINY_AE.token_size - n_params < 8 * TINY_AE.token_size  # the sequence is folded, not padded away
    x = torch.randn(3, n_params)
    z = ae.encode(x)
    assert z.shape == (3, 32)
    assert ae.decode(z).shape == (3, n_params)
    assert ae(x).shape == (3, n_params)


def test_tokens_keep_coordinates_apart():
    """Folding is a reshape: an autoencoder whose layers are identities on tokens returns its input."""
    ae = ParameterAutoencoder(200, AEConfig(token_size=4, channels=(8,), latent_dim=8))
    x = torch.arange(200.0).unsqueeze(0)
    padded = torch.nn.functional.pad(x, (0, ae.length - 200))
    tokens = padded.view(1, ae.tokens, 4).transpose(1, 2)
    assert torch.equal(tokens[0, :, 1], torch.tensor([4.0, 5, 6, 7]))  # token 1 = numbers 4..7


def test_training_pass_is_noisy_and_eval_path_is_not():
    ae = ParameterAutoencoder(100, AEConfig(latent_dim=8, channels=(8, 8), input_noise=0.0, latent_noise=0.5))
    x = torch.randn(2, 100)
    torch.manual_seed(0)
    a = ae(x)
    b = ae(x)
    assert not torch.equal(a, b)  # latent noise
    assert torch.equal(ae.decode(ae.encode(x)), ae.decode(ae.encode(x)))


@pytest.mark.parametrize("n_params,chunks", [(394, 1), (16_384, 1), (16_385, 2), (85_002, 6)])
def test_chunked_shapes_and_a_size_linear_in_the_numbers(n_params, chunks):
    width, latent = 4, 8
    ae = ChunkedAutoencoder(n_params, AEConfig(latent_dim=latent), width=width)
    assert ae.chunks == chunks and ae.chunks * ae.size == ae.length and 0 <= ae.length - n_params < chunks
    x = torch.randn(3, n_params)
    assert ae.encode(x).shape == (3, latent) and ae.decode(ae.encode(x)).shape == (3, n_params)
    # width weights per number each way and one output bias, plus the mixing layers (per chunk, not number)
    mixing = 2 * chunks * width * latent + latent + 2 * chunks * width
    assert sum(p.numel() for p in ae.parameters()) == (2 * width + 1) * ae.length + mixing


def test_chunks_see_only_their_own_numbers():
    ae = ChunkedAutoencoder(40, AEConfig(latent_dim=4), chunk_size=10, width=3)
    x = torch.randn(2, 40)
    h = torch.einsum("bcm,cmw->bcw", x.view(2, 4, 10), ae.enc_weight)
    y = x.clone()
    y[:, 10:20] += 1.0  # chunk 1 changes: only its features move
    h2 = torch.einsum("bcm,cmw->bcw", y.view(2, 4, 10), ae.enc_weight)
    assert torch.equal(h[:, [0, 2, 3]], h2[:, [0, 2, 3]]) and not torch.equal(h[:, 1], h2[:, 1])


def test_autoencoders_by_name():
    assert type(build_autoencoder(100, AEConfig(latent_dim=8))) is AUTOENCODERS["chunked"]  # the default
    assert type(build_autoencoder(100, AEConfig(latent_dim=8, arch="conv", channels=(8,)))) is ParameterAutoencoder
    for name in AUTOENCODERS:
        assert autoencoder_name(build_autoencoder(100, AEConfig(latent_dim=8, channels=(8,)), name)) == name
    with pytest.raises(ValueError, match="conv"):
        build_autoencoder(100, AEConfig(), "transformer")


def test_normalizer_inverse():
    snaps = torch.randn(20, 50) * torch.linspace(0.01, 3, 50) + torch.linspace(-2, 2, 50)
    norm = Normalizer(snaps)
    normed = norm(snaps)
    torch.testing.assert_close(normed.mean(0), torch.zeros(50), rtol=0, atol=1e-5)
    assert norm.scale.numel() == 1  # one global scale
    torch.testing.assert_close(norm.inverse(normed), snaps, rtol=0, atol=1e-5)
    constant = Normalizer(torch.ones(4, 3))  # no spread at all: no division by zero
    assert torch.isfinite(constant(torch.ones(1, 3))).all()


def test_per_tensor_normalizer():
    a, b = torch.randn(30, 10) * 5 + 3, torch.randn(30, 6) * 0.1 - 1
    snaps = torch.cat([a, b], 1)
    norm = Normalizer(snaps, "tensor", segments=[10, 6])
    normed = norm(snaps)
    for part in normed.split([10, 6], 1):  # each tensor standardised over snapshots and entries
        assert abs(float(part.mean())) < 1e-5 and abs(float(part.std()) - 1) < 1e-4
    torch.testing.assert_close(norm.inverse(normed), snaps, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="add up"):
        Normalizer(snaps, "tensor", segments=[10, 5])
    with pytest.raises(ValueError, match="normalize"):
        AEConfig(normalize="layer")


def test_reconstruction_r2():
    x = torch.randn(40, 30)
    assert reconstruction_r2(x, x) == pytest.approx(1.0)
    assert reconstruction_r2(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-12)  # everything -> the mean
    assert reconstruction_r2(x, x + 0.1 * torch.randn_like(x)) == pytest.approx(0.99, abs=0.005)


def test_trains_to_quality_and_keeps_accuracy(collected, evaluator):
    c, data = collected.collection, collected.data
    losses = []
    ae = train_autoencoder(c.snapshots, TINY_AE, seed=0, on_step=lambda s, l: losses.append((s, l)))
    # It stops on quality, well inside the step bound, and says how far it got.
    assert ae.converged and ae.r2 >= TINY_AE.min_r2, (ae.r2, ae.history)
    assert 0 < ae.steps < TINY_AE.steps and ae.steps % TINY_AE.check_every == 0
    assert len(ae.losses) == ae.steps and ae.history[-1] == (ae.steps, ae.r2)
    assert [s for s, _ in losses] == [s - 1 for s, _ in ae.history]
    assert all(r < TINY_AE.min_r2 for _, r in ae.history[:-1])  # it did not stop later than needed
    latents = ae.encode(c.snapshots)
    assert latents.shape == (len(c.snapshots), TINY_AE.latent_dim)
    decoded = ae.decode(latents)
    assert decoded.shape == c.snapshots.shape and decoded.device.type == "cpu"
    assert reconstruction_r2(c.snapshots, decoded) == pytest.approx(ae.r2)

    scores = evaluator.score(decoded, data)
    orig, rec = 100 * c.scores.test_acc.mean(), 100 * scores.test_acc.mean()
    assert abs(float(rec - orig)) <= 1.0, (float(orig), float(rec))


def test_an_unmet_quality_runs_to_the_bound_and_is_flagged(collected):
    snaps = collected.collection.snapshots
    # lr 3e-3: R2 passes 0.5 by the first check (0.94 measured), so only `accept` holds training back.
    cfg = AEConfig(latent_dim=16, channels=(32, 64, 64), steps=300, check_every=100, min_r2=0.5, lr=3e-3)
    strict = train_autoencoder(snaps, cfg, seed=0, accept=lambda recon: False)  # a check that never passes
    assert strict.steps == 300 and not strict.converged and len(strict.history) == 3
    seen = []
    train_autoencoder(snaps, cfg, seed=0, accept=lambda recon: seen.append(recon.shape) or False)
    # The caller's check only runs once R2 is met, on reconstructions of every snapshot.
    assert seen and all(shape == snaps.shape for shape in seen), strict.history


def test_training_is_seeded(collected):
    snaps = collected.collection.snapshots[:8]
    cfg = AEConfig(latent_dim=16, channels=(16, 16), steps=5)
    a, b = train_autoencoder(snaps, cfg, seed=1), train_autoencoder(snaps, cfg, seed=1)
    assert a.losses == b.losses
    assert torch.equal(a.encode(snaps), b.encode(snaps))
    # amp is CUDA-only: on the CPU the same seed gives the same (float32) training.
    c = train_autoencoder(snaps, AEConfig(latent_dim=16, channels=(16, 16), steps=5, amp=True), seed=1)
    assert c.losses == a.losses
