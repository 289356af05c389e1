"""Sampler correctness against an exact denoiser.

For data x0 ~ N(mu, sigma^2) per coordinate and x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps,
the Bayes-optimal noise prediction is
    E[eps | x_t] = sqrt(1 - ab_t) (x_t - sqrt(ab_t) mu) / (ab_t sigma^2 + 1 - ab_t).
With it, the samplers must give back mu and sigma (DDPM, and DDIM in its ODE limit);
DDIM with few steps must match its own closed form (an Euler scheme, see below).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pdiff.diffusion import LatentDiffusion, LDMConfig, Schedule, ddim_step, ddim_timesteps, ddpm_step, sample_latents

MU = torch.tensor([0.5, -1.0, 2.0, 0.0, -0.3, 1.2])
SIGMA = torch.tensor([0.3, 1.0, 1.5, 0.6, 1.2, 0.8])
N = 10_000  # samples: standard error of a std ratio ~0.7%, of a mean ~1% of sigma


@pytest.fixture(autouse=True)
def one_thread():
    # Thousands of tiny ops: a second thread only adds contention on a shared CPU.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def schedule():
    return Schedule(1000, 1e-4, 0.02)


def exact_eps(schedule: Schedule, mu: torch.Tensor, sigma: torch.Tensor):
    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (len(x),) and t.dtype == torch.long  # one timestep per sample
        ab = schedule.alpha_bar[t][:, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * sigma**2 + 1 - ab)
    return eps_fn


def run(schedule, sampler, steps=None, n=N, seed=0):
    return sample_latents(exact_eps(schedule, MU, SIGMA), schedule, (n, len(MU)), sampler=sampler,
                          steps=steps, generator=torch.Generator().manual_seed(seed))


def assert_gaussian(x, mu, sigma, *, mean_tol, std_tol):
    assert torch.isfinite(x).all()
    mean_err = ((x.mean(0) - mu) / sigma).abs()  # in units of sigma
    std_ratio = x.std(0) / sigma
    assert mean_err.max() < mean_tol, f"mean off by {mean_err.tolist()} sigma"
    assert (std_ratio - 1).abs().max() < std_tol, f"std / sigma = {std_ratio.tolist()}"


# --- schedule ---------------------------------------------------------------------

def test_schedule_quantities(schedule):
    t = torch.arange(1000, dtype=torch.float64)
    betas = 1e-4 + (0.02 - 1e-4) * t / 999  # linear, beta_start..beta_end
    alpha_bar = torch.cumprod(1 - betas, 0)  # Ho et al. eq. 4
    torch.testing.assert_close(schedule.betas.double(), betas, rtol=1e-6, atol=0)
    torch.testing.assert_close(schedule.alpha_bar.double(), alpha_bar, rtol=1e-5, atol=0)
    assert float(schedule.alpha_bar_prev[0]) == 1.0
    assert torch.equal(schedule.alpha_bar_prev[1:], schedule.alpha_bar[:-1])
    # beta-tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), eq. 7; 0 at t = 0.
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    torch.testing.assert_close(schedule.posterior_var.double(), betas * (1 - alpha_bar_prev) / (1 - alpha_bar),
                               rtol=1e-5, atol=0)
    assert float(schedule.posterior_var[0]) == 0.0
    assert (schedule.posterior_var[1:] < schedule.betas[1:]).all()


def test_ddim_timesteps():
    ts = ddim_timesteps(1000, 20)
    assert len(ts) == 20 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ddim_timesteps(10, 50) == list(range(9, -1, -1))  # more steps than T: no repeats


# --- one step against its closed form ----------------------------------------------

def linear_schedule_f64(timesteps=1000, beta_start=1e-4, beta_end=0.02):
    """betas, alpha_bar_t and alpha_bar_{t-1} (1 at t = 0), computed here in float64."""
    betas = beta_start + (beta_end - beta_start) * torch.arange(timesteps, dtype=torch.float64) / (timesteps - 1)
    alpha_bar = torch.cumprod(1 - betas, 0)
    return betas, alpha_bar, torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])


def step_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(2 * torch.randn(16, 6, generator=g) for _ in range(3))  # x_t, eps, noise


# t = 1, 2, 10: the posterior variance beta-tilde_t is far from beta_t (about half of it at
# t = 1); at t = 500 or 999 the two nearly coincide, so only the mean is tested there.
@pytest.mark.parametrize("t", [0, 1, 2, 10, 500, 999])
def test_ddpm_step_matches_closed_form(schedule, t):
    betas, alpha_bar, alpha_bar_prev = linear_schedule_f64()
    x_t, eps, noise = step_inputs(t)
    beta, ab, ab_prev = betas[t], alpha_bar[t], alpha_bar_prev[t]
    # Ho et al. 2020 eq. 11: mean = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t), alpha_t = 1 - beta_t.
    mean = (x_t.double() - beta / (1 - ab).sqrt() * eps.double()) / (1 - beta).sqrt()
    # eq. 7: beta-tilde_t = beta_t (1 - ab_{t-1}) / (1 - ab_t); 0 at t = 0 (ab_{-1} = 1), no noise there.
    posterior_var = beta * (1 - ab_prev) / (1 - ab)
    expected = mean + posterior_var.sqrt() * noise.double()
    got = ddpm_step(schedule, x_t, t, eps, noise if t > 0 else None)
    assert got.dtype == torch.float32 and got.shape == x_t.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    if t == 0:
        assert float(posterior_var) == 0.0
        torch.testing.assert_close(got.double(), mean, rtol=1e-5, atol=1e-5)
        # `noise` is ignored at t = 0: the last step returns the mean whatever is passed.
        assert torch.equal(ddpm_step(schedule, x_t, 0, eps, noise), got)
    if t in (1, 2, 10):
        # The test can tell the variances apart: sigma_t^2 = beta_t would be well outside the tolerance.
        with_beta = mean + beta.sqrt() * noise.double()
        assert (with_beta - expected).abs().max() > 1e-3


@pytest.mark.parametrize("t, t_prev", [(999, 949), (500, 480), (10, 0), (1, 0), (0, -1), (20, -1)])
def test_ddim_step_matches_closed_form(schedule, t, t_prev):
    _, alpha_bar, _ = linear_schedule_f64()
    x_t, eps, _ = step_inputs(t)
    ab = alpha_bar[t]
    ab_prev = alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)  # t_prev < 0: x0
    # Song et al. 2021 eq. 12, eta = 0: predict x0, then step deterministically to t_prev.
    x0 = (x_t.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
    expected = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps.double()
    got = ddim_step(schedule, x_t, t, t_prev, eps)
    assert got.dtype == torch.float32 and got.shape == x_t.shape
    # x0 divides by sqrt(ab_t) (~0.006 at t = 999): the float32 error grows by as much.
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    if t_prev < 0:
        torch.testing.assert_close(got.double(), x0, rtol=1e-4, atol=1e-4)


# --- samplers with the exact denoiser ---------------------------------------------

def test_ddpm_reproduces_gaussian(schedule):
    assert_gaussian(run(schedule, "ddpm"), MU, SIGMA, mean_tol=0.05, std_tol=0.04)


def test_ddim_ode_limit_reproduces_gaussian(schedule):
    # All 1000 steps: the Euler error vanishes, DDIM (eta = 0) follows the probability-flow ODE.
    assert_gaussian(run(schedule, "ddim", steps=1000), MU, SIGMA, mean_tol=0.05, std_tol=0.04)


def ddim_closed_form(schedule, x_T, ts, mu, sigma):
    """Independent prediction of DDIM on Gaussian data, in float64.

    With xbar = x / sqrt(ab) and s = sqrt((1 - ab) / ab), Song et al. eq. 12 (eta = 0) is the
    Euler step xbar' = xbar + (s' - s) eps, and the exact eps is s (xbar - mu) / (sigma^2 + s^2),
    so xbar - mu is multiplied by 1 - (s - s') s / (sigma^2 + s^2) per step; s = 0 after the last.
    """
    ab = schedule.alpha_bar.double()
    s = ((1 - ab) / ab).sqrt()
    mu, var = mu.double(), sigma.double() ** 2
    dev = x_T.double() / ab[ts[0]].sqrt() - mu
    for t, t_prev in zip(ts, ts[1:] + [None]):
        s_prev = s[t_prev] if t_prev is not None else 0.0
        dev = dev * (1 - (s[t] - s_prev) * s[t] / (var + s[t] ** 2))
    return mu + dev


@pytest.mark.parametrize("steps", [20, 50])
def test_ddim_matches_closed_form(schedule, steps):
    x = run(schedule, "ddim", steps=steps)
    x_T = torch.randn((N, len(MU)), generator=torch.Generator().manual_seed(0))  # the sampler's first draw
    expected = ddim_closed_form(schedule, x_T, ddim_timesteps(1000, steps), MU, SIGMA)
    torch.testing.assert_close(x.double(), expected, rtol=1e-4, atol=1e-4)
    # The mean is right; the spread shrinks with few steps (Euler's under-dispersion), but
    # by a bounded amount that falls as the steps grow.
    assert_gaussian(x, MU, SIGMA, mean_tol=0.05, std_tol=0.25)
    ratio = x.std(0) / SIGMA
    assert (ratio < 1.02).all() and (ratio > (0.75 if steps == 20 else 0.88)).all(), ratio.tolist()


def test_ddim_is_deterministic_given_x_T(schedule):
    a, b = run(schedule, "ddim", steps=20, n=64), run(schedule, "ddim", steps=20, n=64)
    assert torch.equal(a, b)
    c = run(schedule, "ddim", steps=20, n=64, seed=1)
    assert not torch.allclose(a, c)


def test_unknown_sampler(schedule):
    with pytest.raises(ValueError, match="euler"):
        run(schedule, "euler", n=2)


# --- LatentDiffusion.sample wiring --------------------------------------------------

class ExactDenoiser(nn.Module):
    def __init__(self, schedule: Schedule, mu: torch.Tensor, sigma: torch.Tensor):
        super().__init__()
        self.eps_fn = exact_eps(schedule, mu, sigma)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps_fn(z, t)


@pytest.fixture(scope="module")
def exact_ldm():
    g = torch.Generator().manual_seed(0)
    latents = torch.tensor([3.0, -2.0, 10.0, 0.5]) + torch.tensor([0.5, 2.0, 1.0, 0.2]) * torch.randn(
        64, 4, generator=g)
    ldm = LatentDiffusion(latents, LDMConfig(channels=(8, 8)))  # T = 1000; the network is replaced
    # Exact for the standardised latents: mean 0 (per coordinate), spread std / scale.
    ldm.ema.module = ExactDenoiser(ldm.schedule, torch.zeros(4), latents.std(0) / ldm.scale)
    return ldm, latents


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 1000)])
def test_latent_diffusion_sample_wiring(exact_ldm, sampler, steps):
    ldm, latents = exact_ldm
    out = ldm.sample(N, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    assert out.shape == (N, 4)
    assert_gaussian(out, latents.mean(0), latents.std(0), mean_tol=0.05, std_tol=0.04)
    # sample = sample_latents(EMA denoiser) in standardised space, then * scale + mean.
    z = sample_latents(ldm.ema.module, ldm.schedule, (8, 4), sampler=sampler, steps=steps,
                       generator=torch.Generator().manual_seed(3))
    again = ldm.sample(8, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, z * ldm.scale + ldm.mean, rtol=0, atol=0)
