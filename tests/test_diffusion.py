"""Schedules, forward noising and the sampler against the method page's formulas in float64."""

from __future__ import annotations

import math

import pytest
import torch

from ldseg.config import DiffusionConfig
from ldseg.diffusion.sampler import sample_latent, sampling_timesteps
from ldseg.diffusion.schedule import NoiseSchedule, alpha_bar_table, sample_timesteps
from ldseg.model.networks import standardize


@pytest.mark.parametrize("kind", ["cosine", "linear", "quadratic"])
def test_schedule_is_a_valid_decreasing_alpha_bar(kind):
    a = alpha_bar_table(kind, 1000)
    assert a.dtype == torch.float64 and a.shape == (1000,)
    assert torch.all(a[1:] < a[:-1])
    assert 0 < a[-1] < 1e-3 and a[0] <= 1.0


def test_cosine_matches_nichol_dhariwal_and_ends_near_zero():
    a = alpha_bar_table("cosine", 1000)
    s = 0.008
    f = lambda t: math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 250, 500, 999):
        assert a[t].item() == pytest.approx(f(t) / f(0), rel=1e-12)
    assert a[0].item() == 1.0
    assert a[999].item() == pytest.approx(2.43e-6, rel=0.01)  # method page: about 2.4e-6


def test_linear_and_quadratic_betas_span_1e4_to_002():
    for kind in ("linear", "quadratic"):
        a = alpha_bar_table(kind, 1000)
        betas = 1 - a / torch.cat([torch.ones(1, dtype=a.dtype), a[:-1]])
        assert betas[0].item() == pytest.approx(1e-4, rel=1e-6)
        assert betas[-1].item() == pytest.approx(0.02, rel=1e-6)


def test_forward_noising_formula_and_statistics():
    sched = NoiseSchedule("cosine")
    g = torch.Generator().manual_seed(0)
    z0 = standardize(torch.randn(4, 1, 32, 32, generator=g))
    eps = torch.randn(z0.shape, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    zt = sched.add_noise(z0, eps, t)
    for i, ti in enumerate(t.tolist()):
        a = sched.alpha_bar[ti].item()
        assert torch.allclose(zt[i], math.sqrt(a) * z0[i] + math.sqrt(1 - a) * eps[i], atol=1e-6)
    assert torch.allclose(zt[0], z0[0], atol=1e-6)  # alpha_bar_0 = 1
    big = sched.add_noise(standardize(torch.randn(1, 1, 256, 256, generator=g)),
                          torch.randn(1, 1, 256, 256, generator=g), torch.tensor([500]))
    assert big.std().item() == pytest.approx(1.0, abs=0.03)  # variance preserving


def test_denoised_rules_invert_the_forward_process():
    sched = NoiseSchedule("cosine")
    z0, eps = torch.randn(3, 2, 8, 8), torch.randn(3, 2, 8, 8)
    t = torch.tensor([5, 300, 700])
    zt = sched.add_noise(z0, eps, t)
    assert torch.allclose(sched.denoised(zt, eps, t, "x0", min_divisor=1e-6), z0, atol=1e-4)
    assert torch.allclose(sched.denoised(zt, eps, t, "residual"), zt - eps)
    # The clamp bounds the amplification at large t (training pitfall).
    t_big = torch.tensor([999, 999, 999])
    out = sched.denoised(zt, eps, t_big, "x0", min_divisor=0.05)
    assert out.abs().max() <= (zt.abs() + eps.abs()).max() / 0.05 + 1e-4


def test_standardize_is_per_sample():
    z = torch.cat([torch.randn(1, 1, 16, 16) * 5 + 3, torch.randn(1, 1, 16, 16) * 0.1 - 2])
    s = standardize(z)
    for i in range(2):
        assert s[i].mean().item() == pytest.approx(0, abs=1e-5)
        assert s[i].std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    # Scaling one sample must not change the other (no coupling across the batch).
    z2 = z.clone()
    z2[1] *= 100
    assert torch.allclose(standardize(z2)[0], s[0])


def test_sampling_timesteps_are_evenly_spaced_from_t_minus_1():
    assert sampling_timesteps(1000, 1) == [999]
    steps = sampling_timesteps(1000, 15)
    assert len(steps) == 15 and steps[0] == 999 and steps == sorted(steps, reverse=True)
    gaps = [a - b for a, b in zip(steps[:-1], steps[1:], strict=True)]
    assert max(gaps) - min(gaps) <= 1
    assert sampling_timesteps(1000, 1000) == list(range(999, -1, -1))


def _by_hand(z0, eps_fn, alpha_bar, taus, eta, xis):
    """The method page's update in float64, one sample at a time (no vectorisation)."""
    def std(v):
        return (v - v.mean()) / math.sqrt(((v - v.mean()) ** 2).mean() + 1e-6)

    z = std(z0)
    for k, tau in enumerate(taus):
        a = alpha_bar[tau]
        eps_hat = eps_fn(z, tau)
        x0 = (z - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
        if k == len(taus) - 1:
            z = x0
        else:
            ap = alpha_bar[taus[k + 1]]
            sigma = eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
            z = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma**2) * eps_hat + sigma * xis[k]
        z = std(z)
    return z


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 5, 15])
@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_sampler_matches_hand_computation_in_float64(kind, steps, eta):
    sched = NoiseSchedule(kind)
    alpha_bar = sched.alpha_bar.tolist()

    def eps_fn(z, t):  # a fixed stand-in denoiser, non-linear in z and t
        return 0.3 * z + 0.1 * torch.tanh(z) + (t if isinstance(t, int) else t.double()
                                                .reshape(-1, *[1] * (z.ndim - 1))) / 5000.0

    noise = torch.randn(3, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = sample_latent(lambda z, t: eps_fn(z, t), sched, noise, steps, eta,
                        generator=torch.Generator().manual_seed(7))
    taus = sampling_timesteps(1000, steps)
    # Same fresh noise draws as the sampler (whole-batch draws from the same generator).
    g = torch.Generator().manual_seed(7)
    draws = []
    for k in range(len(taus) - 1):
        a, ap = alpha_bar[taus[k]], alpha_bar[taus[k + 1]]
        sigma = eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
        draws.append(torch.randn(noise.shape, generator=g, dtype=torch.float64) if sigma > 0
                     else torch.zeros(noise.shape, dtype=torch.float64))
    for i in range(noise.shape[0]):
        expected = _by_hand(noise[i], eps_fn, alpha_bar, taus, eta, [d[i] for d in draws])
        assert torch.allclose(out[i], expected, atol=1e-9, rtol=1e-9)
    assert torch.isfinite(out).all()


def test_sampler_is_finite_when_last_step_has_alpha_bar_one():
    # Cosine alpha_bar_0 = 1: with 1000 steps the last tau is 0, where the DDPM sigma is 0/0.
    sched = NoiseSchedule("cosine")
    noise = torch.randn(2, 1, 3, 3)
    for eta in (0.0, 1.0):
        out = sample_latent(lambda z, t: 0.5 * z, sched, noise, 1000, eta,
                            generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all()


def test_ddim_is_deterministic_and_ddpm_depends_on_the_generator():
    sched = NoiseSchedule("cosine")
    noise = torch.randn(2, 1, 6, 6)
    fn = lambda z, t: 0.5 * z  # noqa: E731
    a = sample_latent(fn, sched, noise, 10, 0.0, torch.Generator().manual_seed(0))
    b = sample_latent(fn, sched, noise, 10, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    c = sample_latent(fn, sched, noise, 10, 1.0, torch.Generator().manual_seed(0))
    d = sample_latent(fn, sched, noise, 10, 1.0, torch.Generator().manual_seed(1))
    assert not torch.allclose(c, d)


def test_training_timesteps_uniform_keeps_the_stream_and_late_favours_noisy_steps():
    uniform = sample_timesteps(DiffusionConfig(timestep_sampling="uniform"), 8,
                               torch.Generator().manual_seed(4))
    # earlier runs drew their timesteps with randint: the same seed gives the same steps
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator()
                                              .manual_seed(4)))
    late = sample_timesteps(DiffusionConfig(), 200_000,
                            torch.Generator().manual_seed(0))
    assert late.dtype == torch.int64 and 0 <= late.min() and late.max() == 999
    # density proportional to t: mean 2T/3, P(t >= T/2) = 3/4, P(t < T/10) = 1/100
    assert late.double().mean().item() == pytest.approx(666.5, abs=2)
    assert (late >= 500).double().mean().item() == pytest.approx(0.75, abs=0.005)
    assert (late < 100).double().mean().item() == pytest.approx(0.01, abs=0.002)
