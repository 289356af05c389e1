"""pdiff.diffusion: schedule, per-sample timestep conditioning, training, both samplers."""

from __future__ import annotations

import pytest
import torch

from pdiff import LDMConfig
from pdiff.diffusion import DENOISERS, SAMPLERS, Denoiser, LatentDiffusion, Schedule, UNetDenoiser, train_diffusion

TINY_LDM = LDMConfig(timesteps=200, channels=(32, 64), steps=40, batch_size=16)


@pytest.fixture(scope="module")
def latents():
    g = torch.Generator().manual_seed(0)
    return 3.0 + 0.5 * torch.randn(24, 20, generator=g)  # 20: not a multiple of the UNet stride


@pytest.fixture(scope="module")
def ldm(latents):
    return train_diffusion(latents, TINY_LDM, seed=0)


def test_schedule():
    s = Schedule(1000, 1e-4, 0.02)
    assert s.timesteps == 1000
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()
    assert float(s.alpha_bar[-1]) < 1e-4  # essentially pure noise at t = T - 1
    x0, noise = torch.ones(2, 5), torch.zeros(2, 5)
    t = torch.tensor([0, 999])
    out = s.noised(x0, t, noise)
    torch.testing.assert_close(out[:, 0], s.alpha_bar[t].sqrt())


@pytest.mark.parametrize("make", [lambda: Denoiser(20, (32, 64), Schedule(1000, 1e-4, 0.02).alpha_bar),
                                  lambda: UNetDenoiser(20, (32, 64))], ids=["mlp", "unet"])
def test_denoiser_conditions_each_sample_on_its_own_timestep(make):
    torch.manual_seed(0)
    net = make().eval()
    z = torch.randn(3, 20)
    with torch.no_grad():
        a = net(z, torch.tensor([5, 10, 500]))
        b = net(z, torch.tensor([5, 900, 500]))
        c = net(z, torch.tensor([700, 10, 500]))
    assert a.shape == (3, 20)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)  # t_1 changed; sample 0 unaffected
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=1e-6)
    assert not torch.allclose(a[1], b[1], atol=1e-4)  # sample 1 sees its own new t
    assert not torch.allclose(a[0], c[0], atol=1e-4)
    torch.testing.assert_close(a[1], c[1], rtol=0, atol=1e-6)


def test_training_reduces_loss(latents):
    losses = []
    train_diffusion(latents, LDMConfig(timesteps=200, channels=(32, 64), steps=60, batch_size=24, lr=2e-3),
                    seed=0, on_step=lambda s, l: losses.append(l))
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers(ldm, latents, sampler):
    g = torch.Generator().manual_seed(0)
    out = ldm.sample(5, sampler=sampler, steps=10, generator=g)
    assert out.shape == (5, latents.shape[1])
    assert torch.isfinite(out).all()
    # Samples live on the latents' scale (mean 3): the standardisation is undone.
    assert abs(float(out.mean()) - 3.0) < 2.0
    again = ldm.sample(5, sampler=sampler, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)


def test_ddim_steps_matter(ldm):
    a = ldm.sample(3, sampler="ddim", steps=5, generator=torch.Generator().manual_seed(0))
    b = ldm.sample(3, sampler="ddim", steps=25, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)


def test_unknown_sampler(ldm):
    with pytest.raises(ValueError) as err:
        ldm.sample(2, sampler="euler")
    assert "euler" in str(err.value) and "ddpm" in str(err.value) and "ddim" in str(err.value)


def test_standardisation_buffers(latents):
    model = LatentDiffusion(latents, TINY_LDM)
    torch.testing.assert_close(model.mean, latents.mean(0))
    assert model.scale.numel() == 1 and float(model.scale) > 0
    with torch.no_grad():
        assert float(model.loss(latents)) > 0


def test_ema_warm_up_and_fused_update():
    from pdiff.diffusion import EMA

    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9)
    weights = []
    for step in range(40):
        with torch.no_grad():
            net.weight.add_(1.0)
        before = ema.module.weight.clone()
        weights.append(ema.weight())
        ema.update(net)
        d = 0.0 if step == 0 else min(0.9, (1 + step) / (10 + step))  # the first update copies
        torch.testing.assert_close(ema.module.weight, d * before + (1 - d) * net.weight.detach())
    assert weights[0] == 1.0 and weights[1] == pytest.approx(1 - 2 / 11) and weights[39] == pytest.approx(1 - 40 / 49)
    ema.n_averaged = 1000
    assert ema.weight() == pytest.approx(0.1)  # warm-up over: the configured decay
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_losses_are_floats_and_on_step_every(latents):
    calls = []
    cfg = LDMConfig(timesteps=200, channels=(32, 64), steps=25, batch_size=16)
    ldm = train_diffusion(latents, cfg, seed=0, on_step=lambda s, l: calls.append((s, l)), on_step_every=10)
    assert len(ldm.losses) == 25 and all(isinstance(x, float) for x in ldm.losses)
    assert calls == [(9, ldm.losses[9]), (19, ldm.losses[19]), (24, ldm.losses[24])]
    # amp is CUDA-only: on the CPU the same seed gives the same (float32) training.
    assert train_diffusion(latents, cfg.__class__(**{**cfg.__dict__, "amp": True}), seed=0).losses == ldm.losses


def test_mlp_denoiser_sees_the_whole_latent():
    """Every output coordinate of the MLP denoiser depends on every input coordinate (an AE latent has no
    spatial order to exploit)."""
    torch.manual_seed(0)
    net = Denoiser(40, (32, 32), Schedule(1000, 1e-4, 0.02).alpha_bar).eval()
    z = torch.randn(1, 40, requires_grad=True)
    net(z, torch.tensor([300]))[0, -1].backward()
    assert (z.grad[0, :-1].abs() > 0).all()


def test_mlp_denoiser_starts_from_the_unit_gaussian_noise():
    """The MLP predicts the residual from E[eps | x_t] of N(0, I) data, sqrt(1 - alpha_bar_t) x_t: with its
    network's output zeroed it is exactly that."""
    s = Schedule(1000, 1e-4, 0.02)
    net = Denoiser(8, (16,), s.alpha_bar).eval()
    torch.nn.init.zeros_(net.out[-1].weight)
    torch.nn.init.zeros_(net.out[-1].bias)
    z, t = torch.randn(3, 8), torch.tensor([0, 400, 999])
    with torch.no_grad():
        torch.testing.assert_close(net(z, t), (1 - s.alpha_bar[t]).sqrt()[:, None] * z)


def test_samples_keep_the_spread_and_shape_of_correlated_latents():
    """Latents of a trained autoencoder are correlated across the whole vector. Trained briefly on 200
    draws of a rank-6 Gaussian in 32-D, the samples must have the data's spread and principal variances
    within a few tens of percent: neither collapsed (a copy of the mean) nor blown up (a half-trained
    denoiser's DDIM samples over-spread: an MLP without the prior term had 20x after 300 steps)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 6, generator=g)
    data = torch.randn(200, 6, generator=g) @ a.T + 0.1 * torch.randn(200, 32, generator=g) + 3.0
    ldm = train_diffusion(data, LDMConfig(denoiser="mlp", channels=(128, 128), steps=300), seed=0)
    out = ldm.sample(400, sampler="ddim", steps=50, generator=torch.Generator().manual_seed(1))
    rms = lambda z: float((z - z.mean(0)).pow(2).sum(1).mean().sqrt())  # noqa: E731
    assert 0.8 <= rms(out) / rms(data) <= 1.2
    top = lambda z: torch.linalg.eigvalsh(torch.cov((z - z.mean(0)).T)).flip(0)[:6]  # noqa: E731
    ratio = top(out) / top(data)
    assert ((ratio > 0.5) & (ratio < 1.6)).all(), ratio
    assert float((out.mean(0) - data.mean(0)).norm() / rms(data)) < 0.2
