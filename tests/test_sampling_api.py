"""The user-facing sampling API: options, reproducibility, bad arguments,
precomputed text states and img2img."""
import copy
import re

import pytest
import torch


@pytest.fixture(scope='module')
def base_model(reference_model):
    """The tiny reference cascade with its upsampler detached (base stage only)."""
    model = copy.deepcopy(reference_model)
    model.unet_up = model.diffusion_scheduler_up = None
    return model



def test_prompt_forms_and_shapes(base_model):
    out = base_model.infer(prompt='a corgi', batch_size=3, num_inference_steps=2, seed=0)
    assert out['samples'].shape == (3, 3, 64, 64)
    assert out['samples'].min() >= -1 and out['samples'].max() <= 1
    out = base_model.infer(prompt=['a', 'b'], num_inference_steps=2, seed=0)
    assert out['samples'].shape == (2, 3, 64, 64)


def test_seed_reproducible_and_prompt_sensitive(base_model):
    a = base_model.infer(prompt='a corgi', num_inference_steps=3, seed=7)['samples']
    b = base_model.infer(prompt='a corgi', num_inference_steps=3, seed=7)['samples']
    c = base_model.infer(prompt='a corgi', num_inference_steps=3, seed=8)['samples']
    d = base_model.infer(prompt='a cat', num_inference_steps=3, seed=7)['samples']
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2 and (a - d).abs().max() > 1e-4
    g = torch.Generator().manual_seed(7)
    assert torch.equal(a, base_model.infer(prompt='a corgi', num_inference_steps=3, generator=g)['samples'])


def test_negative_prompt_changes_the_unconditional_branch(base_model):
    x_t = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = base_model.infer(init_image=x_t, prompt='a corgi', num_inference_steps=3)['samples']
    empty = base_model.infer(init_image=x_t, prompt='a corgi', negative_prompt='',
                             num_inference_steps=3)['samples']
    neg = base_model.infer(init_image=x_t, prompt='a corgi', negative_prompt='a cat',
                           num_inference_steps=3)['samples']
    assert torch.equal(plain, empty)
    assert (plain - neg).abs().max() > 1e-4


def test_init_image_both_halves_accepted(base_model):
    x_t = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    one = base_model.infer(init_image=x_t[:1], prompt='a', num_inference_steps=2)['samples']
    both = base_model.infer(init_image=x_t, prompt='a', num_inference_steps=2)['samples']
    assert torch.equal(one, both)


def test_integer_steps_give_exactly_n_model_calls(base_model, monkeypatch):
    calls = []
    unet = base_model.unet
    original = unet.forward
    monkeypatch.setattr(unet, 'forward', lambda *a, **k: calls.append(a[1][0].item()) or original(*a, **k))
    base_model.infer(prompt='a', num_inference_steps=27, seed=0)
    assert len(calls) == 27 and calls == sorted(calls, reverse=True)
    calls.clear()
    base_model.infer(prompt='a', num_inference_steps='10,5', seed=0)
    assert len(calls) == 15


def test_tools_offer_every_sampler():
    """The web app, the demo and the benchmark keep their own sampler lists (they import no model
    code at start-up): the same names as infer's, in the same order."""
    from tool_helpers import load_tool

    from projects.glide.models.sampling import SAMPLERS
    assert load_tool('glide_webui').SAMPLER_NAMES == tuple(SAMPLERS)
    assert load_tool('benchmark').SAMPLERS == tuple(SAMPLERS)
    assert load_tool('glide_demo').SAMPLER_NAMES == tuple(SAMPLERS)


def test_sampler_override(base_model):
    x_t = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    def run(**kw):
        return base_model.infer(init_image=x_t, prompt='a corgi', num_inference_steps=10,
                                            **kw)['samples']
    default = run()
    assert torch.equal(run(sampler='ddim'), default)
    assert torch.equal(run(sampler=dict(type='GlideDDIMScheduler', eta=0.)), default)
    dpm = run(sampler='dpmsolver++')
    assert dpm.shape == default.shape and (dpm - default).abs().max() > 1e-4
    def g():
        return torch.Generator().manual_seed(0)
    ddpm = run(sampler='ddpm', generator=g())
    assert torch.equal(ddpm, run(sampler='ddpm', generator=g()))
    assert (ddpm - default).abs().max() > 1e-2
    sde = run(sampler='dpmsolver++-sde', generator=g())
    assert torch.equal(sde, run(sampler='dpmsolver++-sde', generator=g()))
    assert (sde - dpm).abs().max() > 1e-2 and (sde - ddpm).abs().max() > 1e-2
    with pytest.raises(ValueError, match="sampler must be one of"):
        run(sampler='euler')


def test_progress_bar_per_stage(reference_model, capsys):
    reference_model.infer(prompt='a', num_inference_steps=2, num_inference_steps_up=2,
                          show_progress=True, seed=0)
    err = capsys.readouterr().err
    assert 'GLIDE base' in err and 'GLIDE upsampler' in err


def test_cascade_and_infer_up(reference_model):
    out = reference_model.infer(prompt='a corgi', batch_size=2, num_inference_steps=2,
                                num_inference_steps_up=2, seed=0)
    assert out['samples'].shape == (2, 3, 256, 256) and out['low_res'].shape == (2, 3, 64, 64)
    up = reference_model.infer_up(out['low_res'], prompt='a corgi', num_inference_steps=2, seed=0)
    assert up['samples'].shape == (2, 3, 256, 256)
    # upsample_temp scales drawn noise: temp 0 starts from x_T = 0 exactly
    zero = reference_model.infer_up(out['low_res'], prompt='a corgi', num_inference_steps=2,
                                    upsample_temp=0.0, seed=0)['samples']
    verbatim = reference_model.infer_up(out['low_res'], 2, torch.zeros(2, 3, 256, 256), 'a corgi',
                                        2)['samples']
    assert torch.allclose(zero, verbatim)


@pytest.mark.parametrize('kwargs,error,message', [
    (dict(prompt=3), TypeError, 'prompt must be a str or a list of str, got int'),
    (dict(prompt=[]), ValueError, 'prompt is an empty list'),
    (dict(prompt=['a', 2]), TypeError, 'prompt must hold only str, found int'),
    (dict(prompt=['a', 'b'], batch_size=3), ValueError, 'prompt has 2 entries but batch_size is 3'),
    (dict(prompt='a', batch_size=0), ValueError, 'batch_size must be a positive int'),
    (dict(prompt='a', negative_prompt=['x', 'y']), ValueError,
     'negative_prompt has 2 entries but batch_size is 1'),
    (dict(prompt='a', num_inference_steps='fast10'), ValueError, 'fast10'),
    (dict(prompt='a', num_inference_steps='abc'), ValueError, 'abc'),
    (dict(prompt='a', init_image=torch.zeros(1, 3, 32, 32)), ValueError,
     r'init_image must have shape \(1, 3, 64, 64\)'),
    (dict(prompt='a', init_image=[0.]), TypeError, 'init_image must be a tensor'),
    (dict(prompt='a', classifier_scale=1.), ValueError, r'model\.clip'),
    (dict(prompt='a', labels=torch.tensor([0])), ValueError, 'labels is not supported'),
    (dict(prompt='a', classifier_scale=-1.), ValueError, 'classifier_scale'),
    (dict(prompt='a', seed=1, generator=torch.Generator()), ValueError, 'not both'),
    (dict(prompt='a', inpaint_image=torch.zeros(1, 3, 64, 64)), ValueError, 'given together'),
])
def test_bad_arguments(base_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        base_model.infer(**{"num_inference_steps": 2, **kwargs})


def test_infer_up_needs_an_upsampler(base_model):
    with pytest.raises(RuntimeError, match='no upsampler'):
        base_model.infer_up(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize('image,mask,message', [
    (torch.zeros(1, 3, 64, 64), torch.ones(1, 1, 32, 32), 'must have the same size'),
    (torch.zeros(1, 4, 64, 64), torch.ones(1, 1, 64, 64), 'drop an alpha channel'),
    (torch.full((1, 3, 64, 64), 2.), torch.ones(1, 1, 64, 64), r'must be in \[-1, 1\]'),
    (torch.zeros(3, 3, 64, 64), torch.ones(1, 1, 64, 64), 'batch 3, expected 1 or 1'),
])
def test_bad_inpainting_inputs(base_model, image, mask, message):
    with pytest.raises(ValueError, match=message):
        base_model.infer(prompt='a', num_inference_steps=2, inpaint_image=image, inpaint_mask=mask)


def test_training_free_inpainting_keeps_the_known_region(base_model):
    """With a text2im model, every predicted x0 takes the source in the kept
    region; the final DDIM step returns that x0, so the kept pixels equal the source."""
    source = torch.rand(1, 3, 128, 128) * 2 - 1
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., :, :64] = 0.9  # thresholded at 0.5 -> keep the left half
    out = base_model.infer(prompt='a', num_inference_steps=5, seed=0, inpaint_image=source,
                           inpaint_mask=mask)['samples']
    src64 = torch.nn.functional.interpolate(source, (64, 64), mode='bilinear', antialias=True,
                                            align_corners=False)
    assert (out[..., :32] - src64[..., :32]).abs().max() < 1e-5
    assert (out[..., 32:] - src64[..., 32:]).abs().mean() > 0.1


def test_channels_last_sampling_matches_contiguous(reference_model):
    """NHWC weights and inputs change only the layout: both guided stages
    give the same images up to float rounding. (The upsampler is compared on
    the same low-res input: it quantises its input to 8 bits, where a
    rounding-level difference can flip a level.)"""
    prompts = ['a corgi', 'a cat']
    base = dict(prompt=prompts, batch_size=2, num_inference_steps=3, seed=0)
    expected = reference_model.infer(**base, num_inference_steps_up=2)
    up = dict(prompt=prompts, num_inference_steps=2, seed=1)
    expected_up = reference_model.infer_up(expected['low_res'], **up)['samples']
    try:
        reference_model.set_memory_format('channels_last')
        assert reference_model.memory_format == 'channels_last'
        for unet in (reference_model.unet, reference_model.unet_up):
            conv = unet.in_blocks[0][0].weight
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        got = reference_model.infer(**base, num_inference_steps_up=2)
        got_up = reference_model.infer_up(expected['low_res'], **up)['samples']
    finally:
        reference_model.set_memory_format('contiguous')
    assert reference_model.unet.in_blocks[0][0].weight.is_contiguous()
    torch.testing.assert_close(got['low_res'], expected['low_res'], atol=1e-4, rtol=0)
    torch.testing.assert_close(got_up, expected_up, atol=1e-3, rtol=0)  # < 1/8 of an 8-bit level
    with pytest.raises(ValueError, match="memory_format must be one of .*'nhwc'"):
        reference_model.set_memory_format('nhwc')


def _rows_seen(unet, sizes):
    return unet.register_forward_pre_hook(lambda m, args, kwargs: sizes.append(args[0].shape[0]),
                                          with_kwargs=True)


@pytest.mark.parametrize('stage', ['base', 'composed', 'upsampler', 'inpaint'])
def test_rows_per_call_slices_every_input_of_the_unet_and_keeps_the_samples(stage, reference_model,
                                                                               inpaint_model):
    """Sliced UNet batches (x_t, timesteps, text states and conditioning
    images cut alike) give the unsliced samples; 6 rows by at most 4 are two
    calls of 3."""
    model = inpaint_model if stage == 'inpaint' else reference_model
    unet = model.unet_up if stage == 'upsampler' else model.unet
    gen = torch.Generator().manual_seed(3)
    if stage == 'upsampler':
        low_res = torch.rand(6, 3, 64, 64, generator=gen) * 2 - 1

        def run():
            return model.infer_up(low_res, prompt='a corgi', num_inference_steps=2, seed=1)['samples']
    else:
        kwargs = dict(prompt='a corgi', batch_size=3)
        if stage == 'composed':  # 3 part rows per image: 2 AND parts, the unconditional row
            kwargs = dict(prompt='a corgi AND a cat', batch_size=2)
        if stage == 'inpaint':
            kwargs.update(inpaint_image=torch.rand(3, 3, 64, 64, generator=gen) * 2 - 1,
                          inpaint_mask=(torch.rand(3, 1, 64, 64, generator=gen) > 0.5).float())

        def run():  # the base stage's samples (the upsampler's 8-bit input may flip a level)
            out = model.infer(**kwargs, num_inference_steps=2, num_inference_steps_up=2, seed=0)
            return out.get('low_res', out['samples'])
    sizes = []
    handle = _rows_seen(unet, sizes)
    try:
        model.set_rows_per_call(None)
        whole = run()
        assert sizes == [6, 6]
        sizes.clear()
        model.set_rows_per_call(4)
        sliced = run()
        assert sizes == [3, 3, 3, 3]
    finally:
        handle.remove()
        model.set_rows_per_call('auto')
    torch.testing.assert_close(sliced, whole, atol=1e-4, rtol=0)  # float rounding only


def test_rows_per_call_auto_keeps_the_largest_feature_map_within_24_mib(reference_model, monkeypatch):
    from projects.glide.models.glide import Glide
    from projects.glide.models.sampling import CPU_ROWS_BYTES
    assert CPU_ROWS_BYTES == 24 * 2**20
    for unet, x, cond in ((reference_model.unet, torch.randn(2, 3, 64, 64), {}),
                          (reference_model.unet_up, torch.randn(2, 3, 256, 256),
                           dict(low_res=torch.randn(2, 3, 64, 64)))):
        largest = []
        hooks = [m.register_forward_hook(lambda m, a, out: largest.append(out[0].numel()))
                 for m in unet.modules() if m is not unet]
        try:
            with torch.no_grad():
                emb = unet.encode_text(*reference_model.tokenizer(['a', 'b'], device='cpu'))
                unet(x, torch.tensor([10, 10]), text_emb=emb, **cond)
        finally:
            for h in hooks:
                h.remove()
        # the largest per-row output of any layer is the number the slicing is sized by
        assert max(largest) == unet.largest_feature_numel
        assert reference_model.stage_rows_per_call(unet) == max(1, CPU_ROWS_BYTES // (4 * max(largest)))
    # half precision: half the bytes per row, twice the rows (on a copy: casting the shared model back to
    # float32 would keep bf16's rounding)
    half = copy.deepcopy(reference_model).set_dtype('bf16')
    assert half.stage_rows_per_call(half.unet) == max(1, CPU_ROWS_BYTES // (2 * half.unet.largest_feature_numel))
    try:
        reference_model.set_rows_per_call(5)
        assert reference_model.stage_rows_per_call(reference_model.unet) == 5
    finally:
        reference_model.set_rows_per_call('auto')
    monkeypatch.setattr(Glide, 'device', property(lambda self: torch.device('cuda', 0)))
    assert reference_model.stage_rows_per_call(reference_model.unet) is None  # the GPU's allocator caches


@pytest.mark.parametrize('bad', [0, -2, 2.5, True, 'all', '4'])
def test_rows_per_call_rejects_what_is_not_a_row_count(reference_model, bad):
    with pytest.raises(ValueError, match=(r"rows_per_call must be a positive int, 'auto' or None, got "
                                          + re.escape(repr(bad)))):
        reference_model.set_rows_per_call(bad)
    assert reference_model.rows_per_call == 'auto'


def test_cuda_request_on_cpu_machine_keeps_model_on_cpu(reference_model):
    if torch.cuda.is_available():
        pytest.fail('this test describes CPU-only machines')
    with pytest.warns(UserWarning, match='CUDA is not available'):
        reference_model.to('cuda:0')
    assert reference_model.device.type == 'cpu'


def test_sampling_defaults_are_the_signatures_defaults():
    import inspect

    from projects.glide.models import Glide
    from projects.glide.models.sampling import SAMPLING_DEFAULTS
    assert SAMPLING_DEFAULTS == dict(guidance_scale=3., num_inference_steps=50, num_inference_steps_up='fast27',
                                     upsample_temp=0.997, upsample_strength=None)
    infer = inspect.signature(Glide.infer).parameters
    assert {k: infer[k].default for k in SAMPLING_DEFAULTS} == SAMPLING_DEFAULTS
    up = inspect.signature(Glide.infer_up).parameters
    assert up['num_inference_steps'].default == 'fast27' and up['upsample_temp'].default == 0.997
    assert up['upsample_strength'].default is None


def test_encode_prompt_once_then_sample_from_text_emb(base_model):
    """``encode_prompt`` gives the 2B guided rows (prompts, then negative
    prompts, default ''); ``infer(text_emb=...)`` samples exactly as from the
    prompts."""
    x_t = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    emb = base_model.encode_prompt('a corgi', negative_prompt='a cat', batch_size=2)
    assert emb['xf_proj'].shape[0] == 4 and emb['xf_out'].shape[0] == 4
    def run(**kw):
        return base_model.infer(init_image=x_t, batch_size=2, num_inference_steps=3, **kw)['samples']
    assert torch.equal(run(text_emb=emb), run(prompt='a corgi', negative_prompt='a cat'))
    default = base_model.encode_prompt(['a corgi', 'a dog'])
    assert torch.equal(default['xf_out'], base_model.encode_prompt(['a corgi', 'a dog'], negative_prompt='')['xf_out'])
    assert torch.equal(run(text_emb=default), run(prompt=['a corgi', 'a dog']))
    # without guidance the first B rows are used (B rows alone work too)
    unguided = run(text_emb=default, guidance_scale=1)
    assert torch.equal(unguided, run(text_emb={k: v[:2] for k, v in default.items()}, guidance_scale=1))
    torch.testing.assert_close(unguided, run(prompt=['a corgi', 'a dog'], guidance_scale=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize('kwargs,error,message', [
    (dict(text_emb='a corgi'), TypeError, 'text_emb must be the dict Glide.encode_prompt returns'),
    (dict(text_emb='rows:2', batch_size=2), ValueError,
     r"text_emb has \{'xf_proj': 2, 'xf_out': 2\} rows; with guidance it needs 2 \* batch_size = 4 \(the "
     r'prompts, then the unconditional prompts, as encode_prompt returns\)'),
    (dict(text_emb='rows:6', batch_size=2, guidance_scale=1), ValueError,
     r'without guidance it needs batch_size = 2 \(or twice that\)'),
    (dict(text_emb='rows:2', negative_prompt='a cat'), ValueError,
     'text_emb replaces the encoding of prompt and negative_prompt'),
    (dict(text_emb='rows:2', prompt='a corgi'), ValueError,
     'pass prompt only for the upsampler of a cascade'),
])
def test_bad_text_emb(base_model, kwargs, error, message):
    if isinstance(kwargs['text_emb'], str) and kwargs['text_emb'].startswith('rows:'):
        rows = int(kwargs['text_emb'][5:])
        kwargs['text_emb'] = base_model.encode_prompt(['x'] * (rows // 2), batch_size=rows // 2)
    with pytest.raises(error, match=message):
        base_model.infer(num_inference_steps=2, **kwargs)


def test_encode_prompt_per_stage(reference_model, base_model):
    low = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    emb = reference_model.encode_prompt('a corgi', stage='upsampler')
    assert emb['xf_out'].shape[0] == 1  # the upsampler is not guided
    def run(**kw):
        return reference_model.infer_up(low, num_inference_steps=2, seed=0, **kw)['samples']
    assert torch.equal(run(text_emb=emb), run(prompt='a corgi'))
    with pytest.raises(ValueError, match="the upsampler is not guided: negative_prompt must be None for "
                                         "stage='upsampler'"):
        reference_model.encode_prompt('a corgi', negative_prompt='', stage='upsampler')
    with pytest.raises(ValueError, match="stage='upsampler' but the model has no unet_up"):
        base_model.encode_prompt('a corgi', stage='upsampler')
    with pytest.raises(ValueError, match="stage must be 'base' or 'upsampler', got 'refiner'"):
        base_model.encode_prompt('a corgi', stage='refiner')


def _image(batch=1, size=64, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_img2img_starts_from_the_noised_image_at_the_strengths_timestep(base_model, monkeypatch):
    """strength s: the first UNet call is at the largest kept timestep <=
    s * 1000, on ``image`` noised there with the start noise, and only the
    kept timesteps from there on are run."""
    image, x_t = _image(), torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    calls = []
    unet = base_model.unet
    original = unet.forward
    monkeypatch.setattr(unet, 'forward', lambda *a, **k: calls.append((a[1][0].item(), a[0][:1].clone()))
                        or original(*a, **k))
    for strength, first in ((0.55, 500), (0.5, 500), (1., 900), (0.001, 0)):
        calls.clear()
        base_model.infer(init_image=x_t, prompt='a', num_inference_steps=10, image=image, strength=strength)
        assert [t for t, _ in calls] == list(range(first, -1, -100))  # 10 steps: 900, 800, ..., 0
        expected = base_model.diffusion_scheduler.add_noise(image, x_t, first)
        assert torch.equal(calls[0][1], expected)


def test_strength_maps_to_the_largest_kept_timestep_at_or_below_it():
    from projects.glide.models.sampling import strength_timestep
    assert [strength_timestep(s, 1000) for s in (1., 0.5, 0.3, 0.1 + 0.2, 0.29, 0.7, 0.001)] == [
        1000, 500, 300, 300, 290, 700, 1]
    assert strength_timestep(0.5, 4000) == 2000


def test_img2img_shapes_reproducibility_and_small_strength(base_model, reference_model):
    source = _image(size=128)
    def run(**kw):
        return base_model.infer(prompt='a corgi', batch_size=2, num_inference_steps=10, image=source,
                                            **kw)['samples']
    a = run(strength=0.6, seed=1)
    assert a.shape == (2, 3, 64, 64) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, run(strength=0.6, seed=1))
    assert (a - run(strength=0.6, seed=2)).abs().max() > 1e-2
    # a tiny strength runs the last step only, from the image barely noised: the image comes back
    src64 = torch.nn.functional.interpolate(source, (64, 64), mode='bilinear', antialias=True, align_corners=False)
    near = (run(strength=0.001, seed=1) - src64).abs()
    assert near.max() < 0.05
    assert (a - src64).abs().mean() > 10 * near.mean()  # a larger strength moves further away
    # the cascade starts both stages from the image (resized per stage)
    out = reference_model.infer(prompt='a corgi', num_inference_steps=2, num_inference_steps_up=2, seed=0,
                                image=_image(size=256), strength=0.001)
    assert out['samples'].shape == (1, 3, 256, 256) and out['low_res'].shape == (1, 3, 64, 64)
    near = (out['samples'] - _image(size=256)).abs()
    assert near.mean() < 0.02 and near.max() < 0.1
    up = reference_model.infer_up(out['low_res'], prompt='a corgi', num_inference_steps=2, seed=0,
                                  image=_image(size=256), strength=0.001)['samples']
    near = (up - _image(size=256)).abs()
    assert up.shape == (1, 3, 256, 256) and near.mean() < 0.02 and near.max() < 0.1


@pytest.mark.parametrize('kwargs,error,message', [
    (dict(strength=0.5), ValueError, r'image and strength must be given together \(img2img: strength in \(0, 1\]\)'),
    (dict(image=_image()), ValueError, 'image and strength must be given together'),
    (dict(image=_image(), strength=0), ValueError, r'strength must be in \(0, 1\], got 0'),
    (dict(image=_image(), strength=1.5), ValueError, r'strength must be in \(0, 1\], got 1.5'),
    (dict(image=_image(), strength=True), ValueError, r'strength must be in \(0, 1\], got True'),
    (dict(image=[0.], strength=0.5), TypeError, 'image must be a tensor, got list'),
    (dict(image=torch.zeros(1, 4, 64, 64), strength=0.5), ValueError,
     r'image must be \(B, 3, H, W\) RGB in \[-1, 1\], got \(1, 4, 64, 64\) \(drop an alpha channel first\)'),
    (dict(image=torch.full((1, 3, 64, 64), 2.), strength=0.5), ValueError, r'image must be in \[-1, 1\]'),
    (dict(image=_image(batch=3), strength=0.5, batch_size=2), ValueError, 'image has batch 3, expected 1 or 2'),
])
def test_bad_img2img_arguments(base_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        base_model.infer(**{'prompt': 'a', 'num_inference_steps': 2, **kwargs})


def test_upsample_strength_starts_the_upsampler_from_its_bicubic_input(reference_model, monkeypatch):
    """upsample_strength s: the upsampler's first call is at the largest kept
    timestep <= s * 1000, on the quantised low-res input upsampled
    bicubically and noised there with the start noise; only the kept
    timesteps below run. None keeps GLIDE's start from the noise itself."""
    low_res = _image(batch=2, seed=3)
    x_t = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    calls = []
    unet = reference_model.unet_up
    original = unet.forward
    monkeypatch.setattr(reference_model, 'rows_per_call', None)  # one call per step ('auto' slices 2 rows on a CPU)
    monkeypatch.setattr(unet, 'forward', lambda *a, **k: calls.append((a[1][0].item(), a[0].clone()))
                        or original(*a, **k))
    spec = '3,2,2,1,1,1,1,1,1,1'  # sections of 100 timesteps
    out = reference_model.infer_up(low_res, 2, x_t, 'a corgi', spec, upsample_strength=0.4)['samples']
    assert [t for t, _ in calls] == [400, 300, 299, 200, 199, 100, 99, 50, 0]
    quantised = ((low_res + 1) * 127.5).round() / 127.5 - 1
    bicubic = torch.nn.functional.interpolate(quantised, size=(256, 256), mode='bicubic',
                                              align_corners=False).clamp(-1, 1)
    assert torch.equal(calls[0][1], reference_model.diffusion_scheduler_up.add_noise(bicubic, x_t, 400))
    assert out.shape == (2, 3, 256, 256) and out.min() >= -1 and out.max() <= 1
    calls.clear()
    reference_model.infer_up(low_res, 2, x_t, 'a corgi', spec, upsample_strength=None)
    assert len(calls) == 14 and calls[0][0] == 900 and torch.equal(calls[0][1], x_t)  # every kept step
    # the cascade hands it to the upsampler: the same samples as infer_up on its low_res
    calls.clear()
    both = reference_model.infer(prompt='a corgi', batch_size=2, num_inference_steps=2, seed=0, init_image_up=x_t,
                                 num_inference_steps_up=spec, upsample_strength=0.25)
    assert [t for t, _ in calls] == [200, 199, 100, 99, 50, 0]
    alone = reference_model.infer_up(both['low_res'], 2, x_t, 'a corgi', spec, upsample_strength=0.25)['samples']
    assert torch.equal(both['samples'], alone)


@pytest.mark.parametrize('kwargs,message', [
    (dict(upsample_strength=0), r'upsample_strength must be None or in \(0, 1\], got 0'),
    (dict(upsample_strength=1.5), r'upsample_strength must be None or in \(0, 1\], got 1.5'),
    (dict(upsample_strength=float('nan')), r'upsample_strength must be None or in \(0, 1\], got nan'),
    (dict(upsample_strength=True), r'upsample_strength must be None or in \(0, 1\], got True'),
    (dict(upsample_strength='0.4'), r"upsample_strength must be None or in \(0, 1\], got '0.4'"),
    (dict(upsample_strength=0.4, image=_image(), strength=0.5), 'pass one of them'),
])
def test_bad_upsample_strength(reference_model, monkeypatch, kwargs, message):
    calls = []
    original = reference_model.unet.forward
    monkeypatch.setattr(reference_model.unet, 'forward', lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(ValueError, match=message):
        reference_model.infer(prompt='a', num_inference_steps=2, num_inference_steps_up=2, **kwargs)
    assert not calls  # refused before the base stage
    with pytest.raises(ValueError, match=message):
        reference_model.infer_up(_image(), prompt='a', num_inference_steps=2, **kwargs)


def test_predict_given_low_res_honours_upsample_strength(reference_model, monkeypatch):
    """tools/test.py scoring the upsampler alone (upsample_given_low_res) runs the test_cfg's recipe."""
    calls = []
    original = reference_model.unet_up.forward
    monkeypatch.setattr(reference_model, 'rows_per_call', None)  # one call per step ('auto' slices 2 rows on a CPU)
    monkeypatch.setattr(reference_model.unet_up, 'forward', lambda *a, **k: calls.append(a[1][0].item())
                        or original(*a, **k))
    monkeypatch.setattr(reference_model, 'test_cfg', dict(upsample_given_low_res=True, num_inference_steps_up='ddim10',
                                                          upsample_strength=0.4))
    batch = dict(prompt=['a corgi', 'a cat'], index=[0, 1], low_res=_image(batch=2))
    items = reference_model.predict(batch)
    assert calls == [400, 300, 200, 100, 0]  # one call per step for the whole batch
    assert [item['image'].shape for item in items] == [(3, 256, 256)] * 2
    calls.clear()
    reference_model.test_cfg = dict(upsample_given_low_res=True, num_inference_steps_up='ddim10')
    reference_model.predict(batch)
    assert calls == list(range(900, -1, -100))
