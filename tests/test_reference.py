"""Exactness against openai's GLIDE: reference tensors on tiny random models.

Everything goes through the public path: converter tool -> config ->
``mmagic.apis.init_model`` -> ``infer``/``infer_up`` (and the UNets of the
loaded model for single forwards). Tolerances from the fixture README:
1e-4 for single forwards, 1e-3 for full sampling loops.
"""
import pytest
import torch

from projects.glide.models.diffusion import respaced_timesteps

pytestmark = pytest.mark.shared  # reads ../shared/fixtures

FORWARD_TOL, LOOP_TOL = 1e-4, 1e-3


def test_tokenizer_matches_reference(reference_model, cases):
    case = cases['tokenizer']
    tok = reference_model.tokenizer
    for prompt, raw, tokens, mask in zip(case['prompts'], case['raw_encode'], case['tokens'],
                                         case['mask']):
        assert tok.encode(prompt) == raw
        t, m = tok(prompt)
        assert t[0].tolist() == tokens and m[0].tolist() == mask
    # over-long prompts are truncated to 128 tokens, none padded
    assert sum(case['mask'][-1]) == 128


@pytest.mark.parametrize('case_name,stage', [('forward_base', 'unet'), ('forward_upsample', 'unet_up')])
def test_single_forward(reference_model, cases, case_name, stage):
    case = cases[case_name]
    unet = getattr(reference_model, stage)
    cond = {'low_res': case['low_res']} if 'low_res' in case else {}
    with torch.no_grad():
        out = unet(case['x'], case['t'], case['tokens'], case['mask'], **cond)
    assert out.shape == case['out'].shape
    assert (out - case['out']).abs().max().item() < FORWARD_TOL


@pytest.mark.parametrize('case_name,stage', [('forward_base_inpaint', 'unet'),
                                             ('forward_upsample_inpaint', 'unet_up')])
def test_single_forward_inpaint(inpaint_model, cases, case_name, stage):
    case = cases[case_name]
    cond = {k: case[k] for k in ('low_res', 'inpaint_image', 'inpaint_mask') if k in case}
    with torch.no_grad():
        out = getattr(inpaint_model, stage)(case['x'], case['t'], case['tokens'], case['mask'], **cond)
    assert (out - case['out']).abs().max().item() < FORWARD_TOL


def test_text_encoded_once_equals_per_call(reference_model, cases):
    """Reusing encode_text's output gives the same forward as passing tokens."""
    case = cases['forward_base']
    unet = reference_model.unet
    with torch.no_grad():
        emb = unet.encode_text(case['tokens'], case['mask'])
        out = unet(case['x'], case['t'], text_emb=emb)
    assert (out - case['out']).abs().max().item() < FORWARD_TOL


def test_respacing_sets(cases):
    for spec, kept in cases['respacing'].items():
        assert respaced_timesteps(spec) == kept, spec


def test_posterior_100(reference_model, cases):
    case = cases['posterior_100']
    diffusion = reference_model.diffusion_scheduler
    diffusion.set_timesteps(case['respacing'])
    assert diffusion.timesteps.flip(0).tolist() == case['timesteps']
    for step in case['steps']:
        out = diffusion.diffusion.p_mean_variance(step['model_output'], step['x_t'],
                                                  step['step_index'])
        for key in ('mean', 'log_variance', 'pred_xstart'):
            assert (out[key] - step[key]).abs().max().item() < 1e-5, (step['step_index'], key)


def test_ddim_base_loop_with_guidance(reference_model, cases):
    case = cases['ddim_base_cfg']
    model = reference_model
    saved, model.unet_up = model.unet_up, None  # base stage only
    try:
        samples = model.infer(init_image=case['x_T'], prompt=case['prompt'], batch_size=2,
                              guidance_scale=case['guidance_scale'],
                              num_inference_steps=case['respacing'])['samples']
    finally:
        model.unet_up = saved
    assert samples.shape == (2, 3, 64, 64)
    assert (samples - case['samples']).abs().max().item() < LOOP_TOL


def test_upsampler_loop_fast27(reference_model, cases):
    case = cases['ddim_upsample']
    samples = reference_model.infer_up(case['low_res'], 2, case['x_T'], case['prompt'],
                                       case['respacing'])['samples']
    assert samples.shape == (2, 3, 256, 256)
    assert (samples - case['samples']).abs().max().item() < LOOP_TOL


def test_ddim_base_inpaint_loop_with_guidance(inpaint_model, cases):
    case = cases['ddim_base_inpaint_cfg']
    model = inpaint_model
    saved, model.unet_up = model.unet_up, None
    try:
        samples = model.infer(init_image=case['x_T'], prompt=case['prompt'], batch_size=2,
                              guidance_scale=case['guidance_scale'],
                              num_inference_steps=case['respacing'], inpaint_image=case['image'],
                              inpaint_mask=case['inpaint_mask'])['samples']
    finally:
        model.unet_up = saved
    assert (samples - case['samples']).abs().max().item() < LOOP_TOL
