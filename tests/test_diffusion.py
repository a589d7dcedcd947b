"""Tests of GLIDE's diffusion math and samplers
(projects/glide/models/diffusion)."""
import math

import numpy as np
import pytest
import torch
from conftest import REFERENCE

from projects.glide.models.diffusion import (
    GaussianDiffusion,
    GlideDDIMScheduler,
    GlideDDPMScheduler,
    GlideDPMSolverScheduler,
    GlideDPMSolverSDEScheduler,
    discretized_gaussian_log_likelihood,
    get_named_beta_schedule,
    respaced_timesteps,
    space_timesteps,
)


@pytest.fixture(scope='module')
def cases():
    return torch.load(REFERENCE / 'cases.pt', weights_only=True)


def _cosine_abar64(T=1000):
    """Independent float64 cumulative alphas of the capped cosine schedule."""

    def f(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2)**2

    betas = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    return np.cumprod(1 - np.array(betas))


# --------------------------------------------------------------------------
# schedules and respacing
# --------------------------------------------------------------------------
def test_respacing_fixtures_exact(cases):
    ref = cases['respacing']
    assert set(ref) >= {
        '100', 'fast27', 'ddim25', 'ddim27', 'ddim50', '50', '27',
        '10,10,3,2,2', 'ddim20'
    }
    for spec, kept in ref.items():
        assert respaced_timesteps(spec) == [int(t) for t in kept], spec
        assert space_timesteps(1000, spec) == set(int(t) for t in kept)


def test_int_contract_all_counts():
    T = 1000
    stride_counts = {}
    for stride in range(1, T):
        stride_counts.setdefault(len(range(0, T, stride)), stride)
    for n in range(1, T + 1):
        kept = respaced_timesteps(n)
        assert len(kept) == n, n
        assert kept == sorted(set(kept)), n
        assert 0 <= kept[0] and kept[-1] < T, n
        if n in stride_counts:
            assert kept == list(range(0, T, stride_counts[n])), n
            assert kept == respaced_timesteps(f'ddim{n}'), n
        else:
            assert kept == respaced_timesteps(str(n)), n
    assert respaced_timesteps(100) == list(range(0, 1000, 10))
    assert respaced_timesteps(25) == list(range(0, 1000, 40))
    assert len(respaced_timesteps(27)) == 27
    assert respaced_timesteps(27) == respaced_timesteps('ddim27')
    assert respaced_timesteps(1000) == list(range(1000))
    assert respaced_timesteps(np.int64(50)) == respaced_timesteps(50)


@pytest.mark.parametrize('spec, exc', [
    ('fast10', ValueError),
    ('ddim999', ValueError),
    ('abc', ValueError),
    ('', ValueError),
    ('10,,2', ValueError),
    ('2000', ValueError),
    ('ddim', ValueError),
    (0, ValueError),
    (-3, ValueError),
    (1001, ValueError),
    (1.5, TypeError),
    ([10], TypeError),
    (None, TypeError),
    (True, TypeError),
])
def test_invalid_specs(spec, exc):
    with pytest.raises(exc) as info:
        respaced_timesteps(spec)
    msg = str(info.value)
    assert repr(spec) in msg
    assert 'Accepted forms' in msg and 'ddimN' in msg and 'fast27' in msg
    with pytest.raises(exc):
        GlideDDIMScheduler().set_timesteps(spec)


def test_beta_schedules():
    lin = get_named_beta_schedule('linear', 1000)
    assert lin.dtype == np.float64 and lin.shape == (1000, )
    assert lin[0] == pytest.approx(1e-4, abs=1e-15)
    assert lin[-1] == pytest.approx(0.02, abs=1e-15)
    lin500 = get_named_beta_schedule('linear', 500)
    assert lin500[0] == pytest.approx(2e-4) and lin500[-1] == pytest.approx(
        0.04)

    cos = get_named_beta_schedule('squaredcos_cap_v2', 1000)
    assert cos.dtype == np.float64 and cos.shape == (1000, )
    assert (cos > 0).all() and (cos <= 0.999).all()
    assert cos[-1] == 0.999
    assert (np.diff(cos) >= 0).all()
    np.testing.assert_allclose(
        np.cumprod(1 - cos), _cosine_abar64(), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match='cosine'):
        get_named_beta_schedule('cosine', 1000)


def test_respaced_process_arrays():
    d = GaussianDiffusion.from_schedule('squaredcos_cap_v2', 1000, '100')
    kept = respaced_timesteps('100')
    assert d.num_timesteps == 100
    assert d.timestep_map.tolist() == kept
    np.testing.assert_allclose(
        d.alphas_cumprod, _cosine_abar64()[kept], rtol=1e-10, atol=1e-15)
    assert d.alphas_cumprod_prev[0] == 1.0
    full = GaussianDiffusion.from_schedule()
    assert full.num_timesteps == 1000
    assert full.timestep_map.tolist() == list(range(1000))


def test_inverse_snr_lookup():
    d = GaussianDiffusion.from_schedule('squaredcos_cap_v2', 1000, '100')
    abar = _cosine_abar64()[respaced_timesteps('100')]
    t = torch.tensor([0, 50, 99, 50])
    got = d.inverse_snr(t, 4)
    assert got.dtype == torch.float32 and got.shape == (4, )
    torch.testing.assert_close(got, torch.from_numpy((1 - abar[t]) / abar[t]).float())
    assert got[0] < 1e-3 and got[2] > 1e6  # SNR falls from ~1e4 to ~1e-7 over the schedule
    torch.testing.assert_close(d.inverse_snr(50, 3), got[1].expand(3))
    with pytest.raises(ValueError, match=r'step index out of range \[0, 100\)'):
        d.inverse_snr(torch.tensor([100]), 1)


# --------------------------------------------------------------------------
# reverse process against the reference
# --------------------------------------------------------------------------
def test_posterior_100_fixture(cases):
    case = cases['posterior_100']
    assert case['schedule'] == 'squaredcos_cap_v2'
    d = GaussianDiffusion.from_schedule(case['schedule'], 1000,
                                        case['respacing'])
    assert d.timestep_map.tolist() == [int(t) for t in case['timesteps']]
    for st in case['steps']:
        assert int(d.timestep_map[st['step_index']]) == st['timestep']
        out = d.p_mean_variance(st['model_output'], st['x_t'],
                                st['step_index'])
        for key in ('mean', 'log_variance', 'pred_xstart'):
            torch.testing.assert_close(
                out[key], st[key], atol=1e-5, rtol=0, msg=key)
        torch.testing.assert_close(out['variance'],
                                   torch.exp(out['log_variance']))


def test_ddpm_scheduler_matches_posterior_fixture(cases):
    case = cases['posterior_100']
    sched = GlideDDPMScheduler()
    sched.set_timesteps(case['respacing'])
    for st in case['steps']:
        x = st['x_t']
        out = sched.step(
            st['model_output'],
            torch.tensor(st['timestep']),
            x,
            noise=torch.zeros_like(x))
        torch.testing.assert_close(out.prev_sample, st['mean'], atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(out.pred_xstart, st['pred_xstart'],
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize('eta', [0.0, 1.0])
def test_ddim_against_float64(cases, eta):
    case = cases['posterior_100']
    kept = [int(t) for t in case['timesteps']]
    abar = _cosine_abar64()
    sched = GlideDDIMScheduler(eta=eta)
    sched.set_timesteps('100')
    for st in case['steps']:
        i = st['step_index']
        a = abar[kept[i]]
        a_prev = abar[kept[i - 1]] if i > 0 else 1.0
        x = st['x_t'].double().numpy()
        eps = st['model_output'][:, :3].double().numpy()
        noise = torch.randn(st['x_t'].shape,
                            generator=torch.Generator().manual_seed(i))
        x0 = np.clip(np.sqrt(1 / a) * x - np.sqrt(1 / a - 1) * eps, -1, 1)
        eps2 = (np.sqrt(1 / a) * x - x0) / np.sqrt(1 / a - 1)

        def ddim(a_prev, a_cur):
            sigma = eta * np.sqrt((1 - a_prev) / (1 - a_cur)) * np.sqrt(
                1 - a_cur / a_prev)
            out = x0 * np.sqrt(a_prev) + np.sqrt(1 - a_prev - sigma**2) * eps2
            return out + (i != 0) * sigma * noise.double().numpy()

        out = sched.step(
            st['model_output'], st['timestep'], st['x_t'], noise=noise)
        assert out.prev_sample.dtype == torch.float32
        np.testing.assert_allclose(
            out.pred_xstart.double().numpy(), x0, atol=1e-5, rtol=0)
        got = out.prev_sample.double().numpy()
        # Exact float64 math.  Near t = 0 the reference (and we) evaluate
        # 1 - alpha_bar_prev in float32 on a float32-rounded alpha_bar_prev
        # (about 4e-5), which alone moves the result by up to ~2e-4 there.
        np.testing.assert_allclose(got, ddim(a_prev, a), atol=1e-3, rtol=0)
        if i >= 60:
            np.testing.assert_allclose(
                got, ddim(a_prev, a), atol=1e-5 if eta == 0 else 5e-5,
                rtol=0)
        # Same formula with alpha_bar / alpha_bar_prev rounded to float32
        # first, as the reference's _extract_into_tensor does: tight.
        a32, a_prev32 = float(np.float32(a)), float(np.float32(a_prev))
        if eta == 0:
            np.testing.assert_allclose(
                got, ddim(a_prev32, a32), atol=1e-5, rtol=0)


def test_ddim_eta1_equals_ancestral_with_posterior_variance(cases):
    """DDIM with eta = 1 is the DDPM posterior step (same mean and std)."""
    st = next(s for s in cases['posterior_100']['steps']
              if s['step_index'] == 60)
    mo = st['model_output'].clone()
    mo[:, 3:] = -1.0  # variance = posterior variance (lower bound)
    noise = torch.randn(
        st['x_t'].shape, generator=torch.Generator().manual_seed(0))
    ddim, ddpm = GlideDDIMScheduler(eta=1.0), GlideDDPMScheduler()
    for s in (ddim, ddpm):
        s.set_timesteps('100')
    a = ddim.step(mo, st['timestep'], st['x_t'], noise=noise).prev_sample
    b = ddpm.step(mo, st['timestep'], st['x_t'], noise=noise).prev_sample
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_ddpm_seeded_generator():
    torch.manual_seed(0)
    sched = GlideDDPMScheduler()
    sched.set_timesteps(50)
    x = torch.randn(3, 3, 8, 8)
    mo = torch.randn(3, 6, 8, 8).clamp(-3, 3)
    t = sched.timesteps[10]
    outs = [
        sched.step(mo, t, x, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(outs[0].prev_sample, outs[1].prev_sample)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    idx = sched.index_for_timestep(t, 3)
    pmv = sched.diffusion.p_mean_variance(mo, x, idx)
    expected = pmv['mean'] + torch.exp(0.5 * pmv['log_variance']) * noise
    torch.testing.assert_close(outs[0].prev_sample, expected, atol=1e-6,
                               rtol=0)
    # no noise at the last step
    last = sched.step(mo, sched.timesteps[-1], x,
                      generator=torch.Generator().manual_seed(7))
    pmv0 = sched.diffusion.p_mean_variance(mo, x, 0)
    assert torch.equal(last.prev_sample, pmv0['mean'])


# --------------------------------------------------------------------------
# scheduler API
# --------------------------------------------------------------------------
def test_registry_and_timesteps():
    from mmagic.registry import DIFFUSION_SCHEDULERS
    for name, cls in [('GlideDDIMScheduler', GlideDDIMScheduler),
                      ('GlideDDPMScheduler', GlideDDPMScheduler),
                      ('GlideDPMSolverScheduler', GlideDPMSolverScheduler)]:
        sched = DIFFUSION_SCHEDULERS.build(
            dict(
                type=name,
                num_train_timesteps=1000,
                beta_schedule='squaredcos_cap_v2'))
        assert type(sched) is cls
        assert sched.timesteps.tolist() == list(range(999, -1, -1))
        sched.set_timesteps(100)
        assert sched.timesteps.dtype == torch.long
        assert sched.timesteps.tolist() == list(range(990, -1, -10))
        sched.set_timesteps('fast27')
        assert sched.timesteps[0].item() == 997
        assert len(sched.timesteps) == 27
    ddim = DIFFUSION_SCHEDULERS.build(
        dict(type='GlideDDIMScheduler', eta=0.5, beta_schedule='linear'))
    assert ddim.eta == 0.5 and ddim.beta_schedule == 'linear'


def test_set_timesteps_start_timestep_keeps_the_timesteps_up_to_it():
    """``start_timestep`` cuts the sampling timesteps to those at or below
    it (img2img); the respaced process and its indices stay the same."""
    for cls in (GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler):
        sched = cls()
        sched.set_timesteps(100)
        full, betas = sched.timesteps.tolist(), sched.diffusion.betas.copy()
        for start, first in ((500, 500), (505, 500), (999, 990), (5000, 990), (0, 0)):
            sched.set_timesteps(100, start_timestep=start)
            assert sched.timesteps.tolist() == [t for t in full if t <= start]
            assert sched.timesteps[0].item() == first
            assert np.array_equal(sched.diffusion.betas, betas) and sched.num_inference_steps == 100
        sched.set_timesteps('fast27', start_timestep=600)
        assert sched.timesteps.max().item() <= 600 and sched.timesteps[-1].item() == 0
        for bad in (-1, 1.5, True, '500'):
            with pytest.raises(ValueError, match=r'start_timestep must be an int >= 0 \(the smallest kept '
                                                 r'timestep\), got'):
                sched.set_timesteps(10, start_timestep=bad)


def test_step_is_the_base_class_and_samplers_supply_only_their_update():
    from projects.glide.models.diffusion import GlideSchedulerBase
    for cls in (GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler):
        assert 'step' not in vars(cls) and '_update' in vars(cls)
    with pytest.raises(NotImplementedError, match='GlideSchedulerBase must implement _update'):
        GlideSchedulerBase().step(torch.zeros(1, 6, 2, 2), 999, torch.zeros(1, 3, 2, 2))

    class Spy(GlideDDIMScheduler):
        def _update(self, model_output, sample, index, timestep, **kwargs):
            self.seen = index, timestep, kwargs
            return super()._update(model_output, sample, index, timestep, **kwargs)

    spy = Spy()
    spy.set_timesteps(10)
    spy.step(torch.zeros(2, 6, 2, 2), torch.tensor([900, 300]), torch.zeros(2, 3, 2, 2))
    index, timestep, kwargs = spy.seen
    assert index.tolist() == [9, 3] and timestep.tolist() == [900, 300]
    assert kwargs['clip_denoised'] is True and kwargs['generator'] is None and kwargs['noise'] is None


def test_step_timestep_forms_and_errors():
    sched = GlideDDIMScheduler()
    sched.set_timesteps(10)
    x = torch.randn(2, 3, 4, 4)
    mo = torch.randn(2, 6, 4, 4)
    t = int(sched.timesteps[3])
    ref = sched.step(mo, t, x).prev_sample
    for form in (torch.tensor(t), torch.tensor([t]), torch.tensor([t, t]),
                 torch.tensor(float(t))):
        assert torch.equal(sched.step(mo, form, x).prev_sample, ref)
    # eps-only (C channel) outputs work for DDIM
    assert torch.equal(sched.step(mo[:, :3], t, x).prev_sample, ref)
    # per-sample timesteps
    t2 = int(sched.timesteps[5])
    mixed = sched.step(mo, torch.tensor([t, t2]), x).prev_sample
    assert torch.equal(mixed[0], ref[0])
    assert torch.equal(mixed[1], sched.step(mo, t2, x).prev_sample[1])
    with pytest.raises(ValueError, match='kept timesteps'):
        sched.step(mo, t + 1, x)
    with pytest.raises(ValueError, match='channels'):
        GlideDDPMScheduler().step(mo[:, :3], 999, x)
    with pytest.raises(ValueError):
        sched.step(mo, torch.tensor([t, t, t]), x)


def test_denoised_fn_before_clip():
    sched = GlideDDIMScheduler()
    sched.set_timesteps(10)
    x = torch.randn(2, 3, 4, 4)
    mo = torch.randn(2, 6, 4, 4)
    out = sched.step(
        mo, sched.timesteps[2], x, denoised_fn=lambda x0: x0 * 0 + 5.0)
    assert torch.equal(out.pred_xstart, torch.ones_like(x))


@pytest.mark.parametrize('cls', [GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler])
def test_clip_sample_setting_and_per_call_override(cls):
    """clip_sample=False keeps x0 guesses outside [-1, 1]; step's
    clip_denoised overrides the setting either way; GLIDE's default clamps."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    mo = torch.zeros(2, 6, 4, 4)  # eps = 0 -> x0 = x_t / sqrt(abar), beyond +-1
    noise = torch.zeros_like(x)

    def x0(sched, **kw):
        sched.set_timesteps(10)
        return sched.step(mo, sched.timesteps[-2], x, noise=noise, **kw).pred_xstart

    unclamped = cls(clip_sample=False)
    clamped, free = x0(cls()), x0(unclamped)
    assert cls().clip_sample is True and clamped.abs().max() == 1.0
    assert free.abs().max() > 3.0
    a = float(unclamped.diffusion.alphas_cumprod[1])  # timesteps[-2] is respaced index 1
    torch.testing.assert_close(free, x / a**0.5)
    torch.testing.assert_close(x0(cls(clip_sample=False), clip_denoised=True), clamped)
    torch.testing.assert_close(x0(cls(), clip_denoised=False), free)


def test_half_inputs():
    x = torch.randn(2, 3, 8, 8)
    mo = torch.randn(2, 6, 8, 8).clamp(-2, 2)
    for cls in (GlideDDIMScheduler, GlideDDPMScheduler,
                GlideDPMSolverScheduler):
        sched = cls()
        sched.set_timesteps(25)
        t = sched.timesteps[0]
        kw = {} if cls is GlideDPMSolverScheduler else dict(
            noise=torch.zeros_like(x))
        ref = sched.step(mo, t, x, **kw).prev_sample
        if cls is GlideDPMSolverScheduler:
            sched.set_timesteps(25)
        kw = {k: v.half() for k, v in kw.items()}
        half = sched.step(mo.half(), t, x.half(), **kw)
        assert half.prev_sample.dtype == torch.float16
        assert half.pred_xstart.dtype == torch.float16
        torch.testing.assert_close(
            half.prev_sample.float(), ref, atol=2e-2, rtol=1e-2)


# --------------------------------------------------------------------------
# DPM-Solver++(2M)
# --------------------------------------------------------------------------
def test_dpm_solver_first_steps_equal_ddim():
    """First-order DPM-Solver++ is DDIM (eta 0): the first step of a
    trajectory and the step into timestep 0 agree with DDIM."""
    ddim, dpm = GlideDDIMScheduler(), GlideDPMSolverScheduler()
    ddim.set_timesteps(20)
    dpm.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    mo = torch.randn(2, 6, 8, 8, generator=g)
    for t in (dpm.timesteps[0], dpm.timesteps[-2], dpm.timesteps[-1]):
        a = ddim.step(mo, t, x)
        b = dpm.step(mo, t, x)
        # same math, different float32 op order (DDIM re-derives eps)
        torch.testing.assert_close(b.prev_sample, a.prev_sample, atol=2e-4,
                                   rtol=0)
        torch.testing.assert_close(b.pred_xstart, a.pred_xstart)


def _toy_run(sched, steps, mu, s, clip_denoised, seed=0):
    """Sample N(mu, s^2) data with its exact eps; return the RMS distance to
    the exact probability-flow ODE solution and the sample std, in float64."""
    abar = _cosine_abar64()
    z = np.random.RandomState(seed).randn(64, 3, 8, 8)

    def eps_fn(x, t):
        a = abar[t]
        return np.sqrt(1 - a) * (x - np.sqrt(a) * mu) / (a * s * s + 1 - a)

    sched.set_timesteps(steps)
    a_T = abar[int(sched.timesteps[0])]
    # exact marginal at the first kept timestep; along the ODE the
    # standardised value z is invariant for Gaussian data
    x = torch.from_numpy(
        np.sqrt(a_T) * mu + np.sqrt(a_T * s * s + 1 - a_T) * z)
    for t in sched.timesteps:
        eps = torch.from_numpy(eps_fn(x.numpy(), int(t)))
        mo = torch.cat([eps, torch.zeros_like(eps)], 1)
        x = sched.step(mo, t, x, clip_denoised=clip_denoised).prev_sample
    # a perfect solver ends at x_{t=0} = the exact ODE point and returns
    # E[x0 | x_{t=0}] there, as the samplers' last step does
    a0 = abar[0]
    x_t0 = np.sqrt(a0) * mu + np.sqrt(a0 * s * s + 1 - a0) * z
    exact = mu + np.sqrt(a0) * s * s * (x_t0 - np.sqrt(a0) * mu) / (
        a0 * s * s + 1 - a0)
    got = x.numpy()
    return float(np.sqrt(((got - exact)**2).mean())), float(got.std())


def test_dpm_solver_toy_convergence():
    # unclipped Gaussian data N(0.1, 0.5^2): exact ODE available
    err_ddim, std_ddim = _toy_run(GlideDDIMScheduler(), 20, 0.1, 0.5, False)
    err_dpm, std_dpm = _toy_run(GlideDPMSolverScheduler(), 20, 0.1, 0.5,
                                False)
    assert err_dpm < 0.1 * err_ddim, (err_dpm, err_ddim)
    assert err_dpm < 2e-3
    assert abs(std_dpm - 0.5) < abs(std_ddim - 0.5)
    # more steps: still converging, still well ahead of DDIM
    err_ddim50, _ = _toy_run(GlideDDIMScheduler(), 50, 0.1, 0.5, False)
    err_dpm50, _ = _toy_run(GlideDPMSolverScheduler(), 50, 0.1, 0.5, False)
    assert err_ddim50 < err_ddim and err_dpm50 < 0.2 * err_ddim50
    # default clipping, data well inside [-1, 1]
    err_ddim, _ = _toy_run(GlideDDIMScheduler(), 20, 0.0, 0.25, True)
    err_dpm, _ = _toy_run(GlideDPMSolverScheduler(), 20, 0.0, 0.25, True)
    assert err_dpm < 0.5 * err_ddim, (err_dpm, err_ddim)


def test_dpm_solver_state_reset():
    dpm = GlideDPMSolverScheduler()
    dpm.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 4, 4, generator=g)
    mos = [torch.randn(1, 6, 4, 4, generator=g) for _ in range(3)]

    def run():
        y = x
        for t, mo in zip(dpm.timesteps[:3], mos):
            y = dpm.step(mo, t, y).prev_sample
        return y

    first = run()
    again = run()  # restarting at timesteps[0] begins first order again
    assert torch.equal(first, again)
    dpm.set_timesteps(10)
    assert dpm._prev_x0 is None
    assert torch.equal(run(), first)


# --------------------------------------------------------------------------
# training helpers
# --------------------------------------------------------------------------
def test_q_sample_and_training_losses():
    d = GaussianDiffusion.from_schedule()
    g = torch.Generator().manual_seed(0)
    B = 6
    x_start = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(B, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    x_t = d.q_sample(x_start, t, noise)
    ab = torch.from_numpy(_cosine_abar64()[t.numpy()]).view(-1, 1, 1, 1)
    torch.testing.assert_close(
        x_t.double(),
        ab.sqrt() * x_start.double() + (1 - ab).sqrt() * noise.double(),
        atol=1e-5,
        rtol=0)

    bad = torch.randn(B, 6, 8, 8, generator=g).requires_grad_(True)
    losses = d.training_losses(bad, x_start, x_t, t, noise)
    assert set(losses) == {'mse', 'vb', 'loss'}
    for v in losses.values():
        assert v.shape == (B, ) and torch.isfinite(v).all()
    mse = ((noise - bad[:, :3])**2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses['mse'], mse)
    torch.testing.assert_close(losses['loss'], losses['mse'] + losses['vb'])
    # vb only trains the variance channels (mean detached)
    losses['vb'].sum().backward()
    assert torch.count_nonzero(bad.grad[:, :3]) == 0
    assert torch.count_nonzero(bad.grad[:, 3:]) > 0

    # perfect model: true eps, variance at the posterior (v = -1)
    perfect = torch.cat([noise, -torch.ones_like(noise)], 1)
    good = d.training_losses(perfect, x_start, x_t, t, noise)
    assert torch.allclose(good['mse'], torch.zeros(B))
    # t > 0: KL between identical Gaussians (up to float32 rounding)
    assert good['vb'][1:].abs().max() < 1e-4
    assert (losses['vb'][1:] > 1e-3).all()
    # t == 0: decoder NLL (bits/dim) is inherent, but lower than a bad model
    assert 0 < good['vb'][0] < losses['vb'][0]
    manual = -discretized_gaussian_log_likelihood(
        x_start[:1],
        means=d.q_posterior_mean_variance(x_start[:1], x_t[:1], 0)[0],
        log_scales=0.5 * torch.full_like(
            x_start[:1], float(d.posterior_log_variance_clipped[0]))).mean()
    torch.testing.assert_close(good['vb'][0], manual / math.log(2.0),
                               atol=1e-4, rtol=1e-4)


# DPM-Solver++(2M) SDE

def _abar(t):
    return float(np.cumprod(1 - get_named_beta_schedule('squaredcos_cap_v2', 1000))[t])


def test_dpm_solver_sde_first_step_formula():
    """The first (first-order) step, written out: the x0 estimate moved along the SDE with the
    given noise z: x_j = (s_j / s_i) e^-h x + a_j (1 - e^-2h) x0 + s_j sqrt(1 - e^-2h) z."""
    sde = GlideDPMSolverSDEScheduler()
    sde.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x, mo, z = (torch.randn(2, c, 4, 4, generator=g, dtype=torch.float64) for c in (3, 6, 3))
    t, t_next = int(sde.timesteps[0]), int(sde.timesteps[1])
    a_i, a_j = _abar(t), _abar(t_next)
    x0 = ((x - math.sqrt(1 - a_i) * mo[:, :3]) / math.sqrt(a_i)).clamp(-1, 1)
    lam = [0.5 * math.log(a / (1 - a)) for a in (a_i, a_j)]
    h = lam[1] - lam[0]
    expected = (math.sqrt((1 - a_j) / (1 - a_i)) * math.exp(-h) * x
                + math.sqrt(a_j) * (1 - math.exp(-2 * h)) * x0
                + math.sqrt(1 - a_j) * math.sqrt(1 - math.exp(-2 * h)) * z)
    got = sde.step(mo, t, x, noise=z).prev_sample
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)  # x0 is computed in float32
    # the same data estimate as the ODE solver: without the noise term and with e^-h on x
    # and (1 - e^-2h) on x0, the ODE's step (e^-h on neither, 1 - e^-h on x0) is a different point
    ode = GlideDPMSolverScheduler()
    ode.set_timesteps(20)
    assert (ode.step(mo, t, x).prev_sample - got).abs().max() > 1e-2


def test_dpm_solver_sde_samples_the_toy_distribution():
    """On Gaussian data N(0.1, 0.5^2) with the exact eps, 100 SDE steps from the exact marginal
    end at the data distribution: its mean and standard deviation (50k values; at 20 steps the
    standard deviation is 3% high, the SDE's discretisation error)."""
    mu, s = 0.1, 0.5
    sde = GlideDPMSolverSDEScheduler(clip_sample=False)
    sde.set_timesteps(100)
    g = torch.Generator().manual_seed(3)
    a_T = _abar(int(sde.timesteps[0]))
    x = (math.sqrt(a_T) * mu + math.sqrt(a_T * s * s + 1 - a_T)
         * torch.randn(64, 3, 16, 16, generator=g, dtype=torch.float64))
    for t in sde.timesteps:
        a = _abar(int(t))
        eps = math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * s * s + 1 - a)
        x = sde.step(torch.cat([eps, torch.zeros_like(eps)], 1), t, x, generator=g).prev_sample
    assert abs(x.mean().item() - mu) < 0.01
    assert abs(x.std().item() - s) < 0.01
