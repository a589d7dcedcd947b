"""CLIP guidance through the public path (issue 32, section 1).

``base.pt`` + ``clip.pt`` go through the converter tool, the written config
and checkpoint through ``init_model``, and ``Glide.infer(classifier_scale=S)``
must reproduce the reference's CLIP-guided DDIM run (``clip_cases.pt``
``ddim_clip_guided``), the CLIP seeing the original timesteps. The
scheduler-level guidance rules (ancestral mean shift, DDIM score shift) are
checked through ``step(cond_fn=...)`` on the ``clip_guided_posterior_100``
steps; the errors and the "off means off" guarantees close the file.
"""
import math

import pytest
import torch
from mmagic.registry import DIFFUSION_SCHEDULERS, MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from projects.glide.models.diffusion import GlideDDIMScheduler, GlideDDPMScheduler, GlideDPMSolverScheduler

CONVERTER = 'tools/model_converters/glide_openai_to_mmagic.py'


def assert_close(out, ref, what, rtol=1e-4):
    """Within ``rtol`` of the reference's largest magnitude."""
    err = (out.float() - ref.float()).abs().max().item()
    scale = max(ref.float().abs().max().item(), 1.0)
    assert err <= rtol * scale, f'{what}: max error {err:.3g} > {rtol} x {scale:.3g}'


@pytest.fixture(scope='module')
def model(converted_clip):
    from mmagic.apis import init_model
    init_default_scope('mmagic')
    return init_model(*converted_clip, device='cpu')


def test_converted_config_builds_a_glide_with_clip(model, converted_clip):
    cfg = Config.fromfile(converted_clip[0])
    assert cfg.model.clip.type == 'NoisedCLIP'
    assert model.clip is not None
    keys = [k for k in model.state_dict() if k.startswith('clip.')]
    assert keys and set(keys) == {k for k in torch.load(converted_clip[1], weights_only=True)['state_dict']
                                  if k.startswith('clip.')}
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_strict_loading_covers_clip_keys(converted_clip):
    from projects.glide.checkpoint import CheckpointMismatchError
    init_default_scope('mmagic')
    glide = MODELS.build(Config.fromfile(converted_clip[0]).model)
    state = torch.load(converted_clip[1], weights_only=True)['state_dict']
    dropped = next(k for k in state if k.startswith('clip.'))
    with pytest.raises(CheckpointMismatchError, match='missing keys'):
        glide.load_state_dict({k: v for k, v in state.items() if k != dropped})
    glide.load_state_dict(state)


def test_clip_stays_fp32_and_contiguous(converted_clip):
    init_default_scope('mmagic')
    cfg = Config.fromfile(converted_clip[0]).model
    glide = MODELS.build(dict(cfg, dtype='fp16', memory_format='channels_last'))
    assert glide.unet.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in glide.clip.parameters())
    for p in glide.clip.parameters():
        if p.dim() == 4:
            assert p.is_contiguous()
    glide.set_dtype('bf16')
    assert all(p.dtype == torch.float32 for p in glide.clip.parameters())


def test_ddim_clip_guided_matches_reference(model, clip_cases, monkeypatch):
    """The whole CLIP-guided DDIM run: samples and every step's x_t within 1e-3,
    the CLIP called with the original timesteps 950, 900, ..., 0."""
    case = clip_cases['ddim_clip_guided']
    assert case['eta'] == 0 and case['clip_denoised']
    seen_t, seen_x = [], []
    guidance_grad = model.clip.guidance_grad
    step = model.diffusion_scheduler.step

    def spy_grad(x, t, text_embeddings, grad_scale):
        seen_t.append(torch.as_tensor(t).detach().cpu().clone())
        return guidance_grad(x, t, text_embeddings, grad_scale)

    def spy_step(model_output, timestep, sample, *args, **kwargs):
        seen_x.append(sample.detach().clone())
        assert kwargs.get('cond_fn') is not None
        return step(model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(model.clip, 'guidance_grad', spy_grad)
    monkeypatch.setattr(model.diffusion_scheduler, 'step', spy_step)
    out = model.infer(prompt=case['prompts'], classifier_scale=case['grad_scale'], guidance_scale=1,
                      num_inference_steps=case['respacing'], init_image=case['x_T'])
    samples = out['samples']
    assert (samples - case['samples']).abs().max().item() < 1e-3
    assert torch.stack(seen_t).tolist() == case['cond_fn_t'].tolist()
    assert len(seen_x) == len(case['x_t'])
    for i, (x, ref) in enumerate(zip(seen_x, case['x_t'])):
        assert (x - ref).abs().max().item() < 1e-3, f'x_t of step {i}'
    # guidance moved the samples (the reference moves them by 0.10 on average)
    assert (samples - case['samples_unguided']).abs().mean().item() > 0.05
    # memory: nothing of the per-step graphs survives the loop
    assert not samples.requires_grad and samples.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


def _posterior_setup(model, clip_cases, scheduler_cls):
    case = clip_cases['clip_guided_posterior_100']
    scheduler = scheduler_cls(beta_schedule=model.diffusion_scheduler.beta_schedule)
    scheduler.set_timesteps(case['respacing'])
    assert scheduler.diffusion.timestep_map.tolist() == case['timesteps']
    with torch.no_grad():
        z_text = model.clip.encode_text(case['clip_tokens'], case['clip_lens'])
    seen = []

    def cond_fn(x, t):
        seen.append(torch.as_tensor(t).cpu().tolist())
        return model.clip.guidance_grad(x, t, z_text, case['grad_scale'])

    return case, scheduler, cond_fn, seen


def test_ddpm_step_shifts_the_mean(model, clip_cases):
    """Ancestral step with cond_fn and zero noise = the reference's ``cond_mean``."""
    case, scheduler, cond_fn, seen = _posterior_setup(model, clip_cases, GlideDDPMScheduler)
    for step in case['steps']:
        t = step['timestep']
        with torch.no_grad():
            out = scheduler.step(step['model_output'], t, step['x_t'], noise=torch.zeros_like(step['x_t']),
                                 clip_denoised=case['clip_denoised'], cond_fn=cond_fn)
        assert seen[-1] == [t] * step['x_t'].shape[0]
        assert_close(out.prev_sample, step['cond_mean'], f'step {step["step_index"]} cond_mean')
        assert_close(out.pred_xstart, step['pred_xstart'], f'step {step["step_index"]} pred_xstart')


def test_ddim_step_shifts_the_score(model, clip_cases):
    """DDIM step with cond_fn: x0 = the reference's ``score_pred_xstart`` (not
    clipped again), eps re-derived from it."""
    case, scheduler, cond_fn, seen = _posterior_setup(model, clip_cases, GlideDDIMScheduler)
    diffusion = scheduler.diffusion
    for step in case['steps']:
        t, index, x_t = step['timestep'], step['step_index'], step['x_t']
        with torch.no_grad():
            out = scheduler.step(step['model_output'], t, x_t, clip_denoised=case['clip_denoised'],
                                 cond_fn=cond_fn)
        assert seen[-1] == [t] * x_t.shape[0]
        x0 = step['score_pred_xstart']
        assert_close(out.pred_xstart, x0, f'step {index} score_pred_xstart')
        eps = diffusion.predict_eps_from_xstart(x_t, index, x0)
        abar_prev = float(diffusion.alphas_cumprod_prev[index])
        expected = x0 * math.sqrt(abar_prev) + math.sqrt(1 - abar_prev) * eps
        assert_close(out.prev_sample, expected, f'step {index} DDIM sample')


def test_ddpm_guided_infer_feeds_original_timesteps(model, clip_cases, monkeypatch):
    """Through infer with the ancestral sampler (respaced, few steps): the CLIP
    sees the original timesteps; seeded runs stay reproducible."""
    case = clip_cases['ddim_clip_guided']
    seen = []
    guidance_grad = model.clip.guidance_grad

    def spy(x, t, text_embeddings, grad_scale):
        seen.append(torch.as_tensor(t).cpu().tolist())
        return guidance_grad(x, t, text_embeddings, grad_scale)

    monkeypatch.setattr(model.clip, 'guidance_grad', spy)
    kwargs = dict(prompt=case['prompts'], guidance_scale=2., num_inference_steps=3, sampler='ddpm', seed=0)
    guided = model.infer(classifier_scale=3., **kwargs)['samples']
    scheduler = GlideDDPMScheduler(beta_schedule=model.diffusion_scheduler.beta_schedule)
    scheduler.set_timesteps(3)
    assert seen == [[t] * 2 for t in scheduler.timesteps.tolist()]
    assert max(scheduler.timesteps.tolist()) > 3  # original timesteps, not indices
    assert torch.equal(guided, model.infer(classifier_scale=3., **kwargs)['samples'])
    assert not torch.equal(guided, model.infer(**kwargs)['samples'])


def test_classifier_scale_zero_is_bit_identical_to_no_clip(model, clip_cases, monkeypatch):
    case = clip_cases['ddim_clip_guided']
    kwargs = dict(prompt=case['prompts'], num_inference_steps=3, sampler='ddpm', seed=1)
    with_clip = model.infer(classifier_scale=0., **kwargs)['samples']
    monkeypatch.setattr(model.clip, 'guidance_grad', lambda *a: pytest.fail('CLIP called at scale 0'))
    again = model.infer(classifier_scale=0, **kwargs)['samples']
    monkeypatch.setattr(model, 'clip', None)
    without = model.infer(**kwargs)['samples']
    assert torch.equal(with_clip, without) and torch.equal(again, without)


def test_errors(model, monkeypatch):
    with pytest.raises(ValueError, match='labels'):
        model.infer(prompt='a', labels=torch.tensor([0]), num_inference_steps=1)
    for bad in (-1., float('nan'), float('inf'), '1', True):
        with pytest.raises(ValueError, match='classifier_scale'):
            model.infer(prompt='a', classifier_scale=bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="CLIP guidance supports the 'ddim' and 'ddpm' samplers"):
        model.infer(prompt='a', classifier_scale=1., sampler='dpmsolver++', num_inference_steps=1)
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="CLIP guidance supports the 'ddim' and 'ddpm' samplers"):
        GlideDPMSolverScheduler().step(torch.zeros(1, 6, 8, 8), 999, x, cond_fn=lambda x, t: x)
    monkeypatch.setattr(model, 'clip', None)
    with pytest.raises(ValueError, match='model.clip'):
        model.infer(prompt='a', classifier_scale=1., num_inference_steps=1)
    # the unguided paths still work without a CLIP
    assert model.infer(prompt='a', num_inference_steps=1)['samples'].shape == (1, 3, 64, 64)


def test_registered_scheduler_configs_accept_cond_fn():
    for name in ('GlideDDIMScheduler', 'GlideDDPMScheduler'):
        assert DIFFUSION_SCHEDULERS.build(dict(type=name)).supports_cond_fn
    assert not DIFFUSION_SCHEDULERS.build(dict(type='GlideDPMSolverScheduler')).supports_cond_fn
