"""The user-facing sampling API: options, reproducibility and bad arguments."""
import pytest
import torch


@pytest.fixture(scope='module')
def base_model(reference_model):
    """The tiny reference cascade with its upsampler detached (base stage only)."""
    import copy
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


def test_sampler_override(base_model):
    x_t = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    run = lambda **kw: base_model.infer(init_image=x_t, prompt='a corgi', num_inference_steps=10,
                                        **kw)['samples']
    default = run()
    assert torch.equal(run(sampler='ddim'), default)
    assert torch.equal(run(sampler=dict(type='GlideDDIMScheduler', eta=0.)), default)
    dpm = run(sampler='dpmsolver++')
    assert dpm.shape == default.shape and (dpm - default).abs().max() > 1e-4
    g = lambda: torch.Generator().manual_seed(0)
    ddpm = run(sampler='ddpm', generator=g())
    assert torch.equal(ddpm, run(sampler='ddpm', generator=g()))
    assert (ddpm - default).abs().max() > 1e-2
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
    (dict(prompt='a', classifier_scale=1.), ValueError, 'classifier guidance is not supported'),
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


@pytest.mark.parametrize('dtype,torch_dtype,tol', [('fp16', torch.float16, 1e-2),
                                                   ('bf16', torch.bfloat16, 3e-2)])
def test_half_precision_forward_close_to_fp32(converted, cases, dtype, torch_dtype, tol):
    """Half-precision UNet + text transformer agree with fp32 (relative L2).

    fp16 is within 1e-2. bf16 keeps 8 mantissa bits: on this random tiny
    model it lands at 2.1e-2 (autocast with fp32 weights gives the same
    2.0e-2), so its bound is 3e-2.
    """
    from mmengine import Config
    from mmagic.apis import init_model
    cfg = Config.fromfile(converted['text2im'][0])
    cfg.model.dtype = dtype
    model = init_model(cfg, converted['text2im'][1], device='cpu')
    assert model.unet.in_blocks[1][0].conv_1[2].weight.dtype == torch_dtype
    assert model.unet.in_blocks[1][0].conv_1[0].weight.dtype == torch.float32  # norms stay fp32
    case = cases['forward_base']
    with torch.no_grad():
        out = model.unet(case['x'], case['t'], case['tokens'], case['mask'])
    assert out.dtype == torch.float32
    rel = (out - case['out']).norm() / case['out'].norm()
    assert rel < tol


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


def test_cuda_request_on_cpu_machine_keeps_model_on_cpu(reference_model):
    if torch.cuda.is_available():
        pytest.fail('this test describes CPU-only machines')
    with pytest.warns(UserWarning, match='CUDA is not available'):
        reference_model.to('cuda:0')
    assert reference_model.device.type == 'cpu'


def test_train_timesteps_uniform_or_focused_on_high_noise(base_model, monkeypatch):
    torch.manual_seed(0)
    uniform = base_model.sample_train_timesteps(20000, 1000)
    assert uniform.dtype == torch.long and uniform.min() >= 0 and uniform.max() <= 999
    assert abs((uniform >= 850).float().mean().item() - 0.15) < 0.02  # GLIDE default
    monkeypatch.setitem(base_model.train_cfg, 'high_noise_prob', 0.5)
    monkeypatch.setitem(base_model.train_cfg, 'high_noise_from', 850)
    focused = base_model.sample_train_timesteps(20000, 1000)
    assert abs((focused >= 850).float().mean().item() - (0.5 + 0.5 * 0.15)) < 0.02
    assert focused.min() < 100 and focused.max() == 999
    monkeypatch.setitem(base_model.train_cfg, 'high_noise_prob', 1.)
    assert base_model.sample_train_timesteps(5000, 1000).min() >= 850


@pytest.mark.parametrize('train_cfg, message', [
    (dict(high_noise_prob=1.5), r'high_noise_prob must be in \[0, 1\], got 1.5'),
    (dict(offset_noise=-0.1), r'offset_noise must be >= 0, got -0.1'),
    (dict(foreground_weight=-1), r'foreground_weight must be >= 0, got -1'),
    (dict(kind_weight=-2), r'kind_weight must be >= 0, got -2'),
    (dict(grounding_weight=-0.5), r'grounding_weight must be >= 0, got -0.5'),
    (dict(off_phrase_weight=-1.), r'off_phrase_weight must be >= 0, got -1.0'),
    (dict(grounding_max_timestep=-1), r'grounding_max_timestep must be None or an int >= 0, got -1'),
    (dict(grounding_max_timestep=700.), r'grounding_max_timestep must be None or an int >= 0, got 700.0'),
    (dict(coarse_noise=-0.2), r'coarse_noise must be >= 0, got -0.2'),
    (dict(coarse_noise_grid=0), r'coarse_noise_grid must be an int >= 1, got 0'),
    (dict(coarse_noise_grid=2.5), r'coarse_noise_grid must be an int >= 1, got 2.5'),
    (dict(high_noise_prob=0.5, high_noise_from=1000),
     r'high_noise_from must be in \[0, 1000\), got 1000'),
    (dict(high_noise_prob=0.5, stage='upsampler'),
     r"train_cfg.stage='upsampler' but the model has no unet_up"),
])
def test_bad_train_cfg(train_cfg, message):
    from projects.glide.models import Glide
    unet = dict(type='Text2ImUNet', image_size=8, base_channels=32, channel_mult=(1, ),
                resblocks_per_downsample=1, attention_res=(), num_head_channels=32, text_ctx=4,
                xf_width=32,
                xf_layers=1, xf_heads=1)
    with pytest.raises(ValueError, match=message):
        Glide(unet=unet, diffusion_scheduler=dict(type='GlideDDIMScheduler'),
              tokenizer=dict(type='GlideTokenizer', text_ctx=4), train_cfg=train_cfg)


def test_train_noise_white_or_with_per_channel_offset(base_model, monkeypatch):
    x0 = torch.zeros(64, 3, 16, 16)
    torch.manual_seed(0)
    white = torch.randn_like(x0)
    torch.manual_seed(0)
    assert torch.equal(base_model.train_noise(x0), white)  # GLIDE default
    monkeypatch.setitem(base_model.train_cfg, 'offset_noise', 0.5)
    torch.manual_seed(0)
    offset = base_model.train_noise(x0) - white  # same white draw first, then the offsets
    assert offset.shape == x0.shape
    # one constant per image and channel, standard deviation 0.5 over the 192 of them
    torch.testing.assert_close(offset, offset[:, :, :1, :1].expand_as(offset))
    assert 0.4 < offset[:, :, 0, 0].std().item() < 0.6
    assert len(offset[:, :, 0, 0].unique()) == 64 * 3


def test_train_noise_coarse_grid_is_smooth_and_per_image(base_model, monkeypatch):
    x0 = torch.zeros(256, 3, 16, 16)
    torch.manual_seed(0)
    white = torch.randn_like(x0)
    monkeypatch.setitem(base_model.train_cfg, 'coarse_noise', 0.5)
    monkeypatch.setitem(base_model.train_cfg, 'coarse_noise_grid', 2)
    torch.manual_seed(0)
    coarse = base_model.train_noise(x0) - white  # same white draw first, then the grid
    assert coarse.shape == x0.shape
    # bilinear from 2x2: each 8x8 quarter's inner 4x4 corner block is its grid node's value
    torch.testing.assert_close(coarse[..., :4, :4], coarse[..., :1, :1].expand(-1, -1, 4, 4))
    torch.testing.assert_close(coarse[..., 12:, 12:], coarse[..., -1:, -1:].expand(-1, -1, 4, 4))
    nodes = torch.stack([coarse[..., 0, 0], coarse[..., 0, -1], coarse[..., -1, 0],
                         coarse[..., -1, -1]])
    assert 0.45 < nodes.std().item() < 0.55  # the grid nodes are N(0, 0.5^2)
    assert abs(torch.corrcoef(nodes.flatten(1))[0, 3].item()) < 0.1  # drawn independently
    # smooth in between: neighbouring pixels differ by at most a quarter of the node step
    step = (nodes[1] - nodes[0]).abs()
    assert ((coarse[..., 0, 1:] - coarse[..., 0, :-1]).abs().amax(-1) <= step / 4 + 1e-6).all()


def test_pixel_weights_mark_the_foreground(base_model, monkeypatch):
    x0 = torch.full((2, 3, 16, 16), -1.)
    x0[0, 0, 4:8, 4:8] = 1.  # a red-ish square on black
    x0[1] = 1.
    x0[1, :, 10:, 0:6] = 0.5  # a grey block touching the border of a white image
    assert base_model.pixel_weights(x0) is None  # GLIDE default
    monkeypatch.setitem(base_model.train_cfg, 'foreground_weight', 4.)
    weights = base_model.pixel_weights(x0)
    assert weights.shape == (2, 1, 16, 16)
    expected = torch.ones(2, 1, 16, 16)
    expected[0, 0, 4:8, 4:8] = 5.
    expected[1, 0, 10:, 0:6] = 5.
    torch.testing.assert_close(weights, expected)


def test_pixel_weights_add_the_kind_mask(base_model, monkeypatch):
    x0 = torch.full((2, 3, 16, 16), -1.)
    x0[0, 0, 4:8, 4:8] = 1.  # a red-ish square on black; the second image is all black
    kind_mask = torch.zeros(2, 1, 16, 16)
    kind_mask[0, 0, 2:6, 2:6] = 1.  # overlaps the square's top-left quarter
    kind_mask[1, 0, 0, 0] = 0.5
    monkeypatch.setitem(base_model.train_cfg, 'kind_weight', 2.)
    expected = torch.ones(2, 1, 16, 16)
    expected[0, 0, 2:6, 2:6] = 3.
    expected[1, 0, 0, 0] = 2.
    torch.testing.assert_close(base_model.pixel_weights(x0, kind_mask), expected)
    monkeypatch.setitem(base_model.train_cfg, 'foreground_weight', 4.)
    expected[0, 0, 4:8, 4:8] += 4.  # 7 where the mask and the square overlap, 5 on the rest
    torch.testing.assert_close(base_model.pixel_weights(x0, kind_mask), expected)
    assert expected[0, 0, 4, 4] == 7. and expected[0, 0, 7, 7] == 5.
    with pytest.raises(ValueError, match=r"kind_weight > 0 needs a 'kind_mask' \(B, 1, H, W\) in "
                                         r'the batch, e.g. from ShapesDataset\(kind_mask=True\)'):
        base_model.pixel_weights(x0)
    with pytest.raises(ValueError, match=r'kind_mask must be \(2, 1, 16, 16\) \(B, 1, H, W\) like '
                                         r'the images, got \(2, 16, 16\)'):
        base_model.pixel_weights(x0, kind_mask[:, 0])


def test_mse_weights_truncated_snr(base_model, monkeypatch):
    abar = torch.tensor([0.9, 0.5, 0.2, 1e-4, 0.2], dtype=torch.float64)
    inverse_snr = ((1 - abar) / abar).float()
    assert torch.equal(base_model.mse_weights(inverse_snr), torch.ones(5))  # GLIDE default
    monkeypatch.setitem(base_model.train_cfg, 'max_mse_weight', 100.)
    # 1/SNR = (1 - abar) / abar: 0.11 -> 1, 1 -> 1, 4 -> 4, 9999 -> capped at 100
    torch.testing.assert_close(base_model.mse_weights(inverse_snr),
                               torch.tensor([1., 1., 4., 100., 4.]))


def _plain_and_weighted_mse(model, monkeypatch, batch, knob, value):
    """The eps MSE of one draw of timesteps/noise without and with
    ``train_cfg[knob] = value``; the vb term must not change."""
    monkeypatch.setitem(model.train_cfg, 'caption_dropout', 0.)
    torch.manual_seed(3)
    plain = model.loss(batch)
    monkeypatch.setitem(model.train_cfg, knob, value)
    torch.manual_seed(3)
    weighted = model.loss(batch)
    torch.testing.assert_close(weighted['loss_vb'], plain['loss_vb'])
    return plain['loss_mse'], weighted['loss_mse']


def test_loss_applies_mse_weights(base_model, monkeypatch):
    """The eps MSE grows once the high-noise rows are weighted."""
    batch = dict(img=torch.rand(4, 3, 64, 64) * 2 - 1, prompt=['a', 'b', 'c', 'd'])
    monkeypatch.setitem(base_model.train_cfg, 'high_noise_prob', 1.)  # all rows at t >= 900
    plain, weighted = _plain_and_weighted_mse(base_model, monkeypatch, batch, 'max_mse_weight', 50.)
    # 1/SNR > 41 for every t >= 900 on the cosine schedule
    assert weighted > 40 * plain


def test_loss_applies_pixel_weights(base_model, monkeypatch):
    """With weight w on the foreground, the eps MSE grows by about w times
    the foreground's share of the pixels."""
    x0 = torch.full((2, 3, 64, 64), -1.)
    x0[:, 2, 20:40, 20:40] = 1.
    batch = dict(img=x0, prompt=['a', 'b'])
    plain, weighted = _plain_and_weighted_mse(base_model, monkeypatch, batch, 'foreground_weight', 3.)
    # 400 of 4096 pixels weigh 4: about 1 + 3 * 400 / 4096 when errors are spread evenly
    assert 1.15 < (weighted / plain).item() < 1.45


def test_loss_weights_the_kind_mask_from_the_batch(base_model, monkeypatch):
    """``loss`` passes the batch's ``kind_mask`` on: weight k on a mask over a
    quarter of the pixels grows the eps MSE by about k / 4."""
    kind_mask = torch.zeros(2, 1, 64, 64)
    kind_mask[..., :32, :32] = 1.
    batch = dict(img=torch.full((2, 3, 64, 64), -1.), prompt=['a', 'b'], kind_mask=kind_mask)
    plain, weighted = _plain_and_weighted_mse(base_model, monkeypatch, batch, 'kind_weight', 4.)
    assert 1.7 < (weighted / plain).item() < 2.3


def _grounding_batch(model):
    """Two captions, each shape's colour and kind word, and masks of the
    left and right halves."""
    from projects.glide.datasets import Scene, Shape, shape_word_positions
    prompts = ['a red circle to the left of a blue square', 'a green triangle to the left of a red circle']
    scenes = [Scene('white', [Shape('circle', 'red'), Shape('square', 'blue')], 'to the left of'),
              Scene('white', [Shape('triangle', 'green'), Shape('circle', 'red')], 'to the left of')]
    positions = torch.stack([torch.from_numpy(shape_word_positions(model.tokenizer, p, sc))
                             for p, sc in zip(prompts, scenes)])
    masks = torch.zeros(2, 2, 64, 64)
    masks[:, 0, :, :32] = 1.
    masks[:, 1, :, 32:] = 1.
    return dict(img=torch.rand(2, 3, 64, 64) * 2 - 1, prompt=prompts, grounding_tokens=positions,
                grounding_masks=masks)


def _training_attention(model, batch, seed):
    """The text attention records, token mask and timesteps of
    ``model.loss(batch)`` of two rows after ``torch.manual_seed(seed)``."""
    from projects.glide.models.grounding import recorded_text_attention
    torch.manual_seed(seed)
    torch.rand(2)  # the caption dropout's draw
    tokens, mask = model.tokenizer(batch['prompt'])
    t = model.sample_train_timesteps(2, 1000)
    diffusion = model.diffusion_scheduler.train_diffusion
    x_t = diffusion.q_sample(batch['img'], t, model.train_noise(batch['img']))
    with recorded_text_attention(model.unet) as records:
        model.unet(x_t, t, tokens, mask)
    return records, mask, t


def test_loss_adds_the_grounding_loss_of_the_batchs_words(base_model, monkeypatch):
    """``grounding_weight`` adds ``loss_grounding``, that weight times the
    mean word loss over the text attention blocks, and leaves the other
    losses alone; rows whose prompt was dropped do not count."""
    from projects.glide.models.grounding import token_grounding_loss
    batch = _grounding_batch(base_model)
    torch.manual_seed(3)
    plain = base_model.loss(batch)
    assert set(plain) == {'loss_mse', 'loss_vb'}
    monkeypatch.setitem(base_model.train_cfg, 'grounding_weight', 2.)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    torch.manual_seed(3)
    grounded = base_model.loss(batch)
    torch.manual_seed(3)
    monkeypatch.setitem(base_model.train_cfg, 'grounding_weight', 0.)
    same_draws = base_model.loss(batch)
    for key in ('loss_mse', 'loss_vb'):
        torch.testing.assert_close(grounded[key], same_draws[key])
    # the same number from the parts, on the same timesteps
    records, _, _ = _training_attention(base_model, batch, seed=3)
    assert records
    expected = torch.stack([token_grounding_loss(w, batch['grounding_tokens'], batch['grounding_masks'])[0].mean()
                            for _, w in records]).mean()
    torch.testing.assert_close(grounded['loss_grounding'], 2 * expected)
    assert 0.1 < expected < 1
    monkeypatch.setitem(base_model.train_cfg, 'grounding_weight', 2.)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 1.)
    assert base_model.loss(batch)['loss_grounding'] == 0
    monkeypatch.setitem(base_model.train_cfg, 'grounding_sides', (64, ))
    with pytest.raises(ValueError, match=r'train_cfg.grounding_weight > 0 needs text attention blocks; the '
                                         r'UNet has none on feature maps of the sides \(64,\)'):
        base_model.loss(batch)
    del batch['grounding_masks']
    with pytest.raises(ValueError, match=r"train_cfg.grounding_weight > 0 needs 'grounding_masks' in the "
                                         r'batch, e.g. from ShapesDataset\(grounding=True\)'):
        base_model.loss(batch)


def test_loss_adds_the_off_phrase_loss_of_the_batchs_boxes(base_model, monkeypatch):
    """``off_phrase_weight`` adds ``loss_off_phrase``, that weight times the
    mean off-phrase loss over the text attention blocks, on the region of
    each shape's last word; the other losses stay; dropped rows do not count;
    the errors name what is missing."""
    from projects.glide.models.grounding import off_phrase_attention_loss
    batch = _grounding_batch(base_model)
    batch['grounding_masks'] = torch.stack([torch.zeros_like(batch['grounding_masks']),
                                            batch['grounding_masks']], dim=2)  # (B, S, W, R, R)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    torch.manual_seed(3)
    plain = base_model.loss(batch)
    monkeypatch.setitem(base_model.train_cfg, 'off_phrase_weight', 2.)
    torch.manual_seed(3)
    with_loss = base_model.loss(batch)
    assert set(with_loss) == {'loss_mse', 'loss_vb', 'loss_off_phrase'}
    for key in ('loss_mse', 'loss_vb'):
        torch.testing.assert_close(with_loss[key], plain[key])
    records, mask, _ = _training_attention(base_model, batch, seed=3)
    expected = torch.stack([off_phrase_attention_loss(w, batch['grounding_tokens'], batch['grounding_masks'][:, :, 1],
                                                      mask)[0].mean() for _, w in records]).mean()
    torch.testing.assert_close(with_loss['loss_off_phrase'], 2 * expected)
    assert 0.05 < expected < 0.95
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 1.)
    assert base_model.loss(batch)['loss_off_phrase'] == 0
    batch['grounding_masks'] = batch['grounding_masks'][:, :, 1]
    with pytest.raises(ValueError, match=r"train_cfg.off_phrase_weight > 0 needs a region per word in "
                                         r"'grounding_masks' \(B, S, W, R, R\), e.g. ShapesDataset\("
                                         r"grounding_kind_region='box'\); got \(2, 2, 64, 64\)"):
        base_model.loss(batch)
    del batch['grounding_tokens']
    with pytest.raises(ValueError, match=r"train_cfg.off_phrase_weight > 0 needs 'grounding_tokens' in the "
                                         r'batch, e.g. from ShapesDataset\(grounding=True\)'):
        base_model.loss(batch)


def test_grounding_loss_counts_only_rows_up_to_its_max_timestep(base_model, monkeypatch):
    """``grounding_max_timestep`` leaves the rows drawn at later timesteps
    out of ``loss_grounding`` (and nothing else): the loss equals the mean
    over the rows kept, and is 0 when none is."""
    batch = _grounding_batch(base_model)
    monkeypatch.setitem(base_model.train_cfg, 'grounding_weight', 1.)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    records, _, t = _training_attention(base_model, batch, seed=5)
    early = int(t.argmin())
    only_early = torch.zeros(2, dtype=torch.bool)
    only_early[early] = True
    expected = base_model.grounding_loss(records, batch, only_early)
    both = base_model.grounding_loss(records, batch, torch.ones(2, dtype=torch.bool))
    assert t.min() < t.max() and not torch.isclose(expected, both)

    def loss_with(max_timestep):
        monkeypatch.setitem(base_model.train_cfg, 'grounding_max_timestep', max_timestep)
        torch.manual_seed(5)
        return base_model.loss(batch)

    torch.testing.assert_close(loss_with(None)['loss_grounding'], both)
    torch.testing.assert_close(loss_with(int(t.max()))['loss_grounding'], both)
    between = loss_with(int(t.min()))
    torch.testing.assert_close(between['loss_grounding'], expected)
    torch.testing.assert_close(between['loss_mse'], loss_with(None)['loss_mse'])
    assert loss_with(int(t.min()) - 1)['loss_grounding'] == 0


def _tiny_unet(**kwargs):
    from projects.glide.models import Text2ImUNet
    torch.manual_seed(0)
    size = dict(image_size=32, base_channels=32, channel_mult=(1, 2), resblocks_per_downsample=1,
                attention_res=(16, ), num_head_channels=32, text_ctx=8, xf_width=32, xf_layers=1, xf_heads=1)
    return Text2ImUNet(**dict(size, **kwargs)).eval()


def test_norm_groups_set_every_group_norm_and_are_checked(reference_model):
    from projects.glide.models.layers import FP32GroupNorm
    assert {m.num_groups for m in reference_model.unet.modules()
            if isinstance(m, FP32GroupNorm)} == {32}  # GLIDE's default
    unet = _tiny_unet(norm_groups=8)
    assert {m.num_groups for m in unet.modules() if isinstance(m, FP32GroupNorm)} == {8}
    with pytest.raises(ValueError, match=r'norm_groups=24 must divide the channels of every '
                                         r'GroupNorm, which are \[32, 64, 128\] here'):
        _tiny_unet(norm_groups=24)
    with pytest.raises(ValueError, match='norm_groups must be positive, got 0'):
        _tiny_unet(norm_groups=0)


def test_attention_position_embeddings_start_at_zero_and_only_where_asked():
    plain, placed = _tiny_unet(), _tiny_unet(attention_position=True)
    shapes = {k: tuple(v.shape) for k, v in placed.state_dict().items() if k.endswith('.position_embedding')}
    assert shapes == {'in_blocks.3.1.position_embedding': (64, 16, 16),
                      'mid_blocks.1.position_embedding': (64, 16, 16),
                      'out_blocks.0.1.position_embedding': (64, 16, 16),
                      'out_blocks.1.1.position_embedding': (64, 16, 16)}
    assert not any('.position_embedding' in k for k in plain.state_dict())
    assert all((v == 0).all() for k, v in placed.state_dict().items() if k in shapes)
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == sorted(shapes) and not unexpected
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t, tokens, mask = torch.tensor([900, 10]), torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.bool)
    with torch.no_grad():  # zero embeddings: the same model as without them
        assert torch.equal(placed(x, t, tokens, mask), plain(x, t, tokens, mask))


def test_attention_position_lets_the_text_act_in_some_places_only():
    """Why the tiny base config sets ``attention_position``: on features that
    are the same everywhere (an image at high noise says nothing about the
    layout) plain attention can only add the same text message to every
    pixel; with a position embedding it can add it at some places only."""
    from projects.glide.models.unet import TextAttentionBlock
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 1, 1, generator=gen).expand(1, 64, 16, 16)
    text = [torch.randn(1, 32, 5, generator=gen) for _ in range(2)]
    spreads = {}
    for side in (None, 16):
        torch.manual_seed(0)
        block = TextAttentionBlock(64, 32, encoder_channels=32, position_size=side)
        torch.nn.init.normal_(block.proj_out.weight, std=0.1)  # zero in GLIDE
        if side:
            torch.nn.init.normal_(block.position_embedding, generator=gen)
        with torch.no_grad():
            change = block(x, text[0]) - block(x, text[1])  # what the text adds, per pixel
        spreads[side] = (change.std(dim=(2, 3)).max().item(), change.abs().max().item())
    assert spreads[None][0] < 1e-5 * spreads[None][1]
    assert spreads[16][0] > 0.1 * spreads[16][1]
    with pytest.raises(ValueError, match=r'this attention block has a position embedding for '
                                         r'\(16, 16\) features, got \(8, 8\)'):
        block(torch.zeros(1, 64, 8, 8), text[0])


def test_attention_weights_are_what_the_block_mixes_its_values_with():
    """``TextAttentionBlock.attention_weights``: per pixel a softmax over the
    text positions then the pixels, and the block's output is the values
    mixed with exactly those weights."""
    from projects.glide.models.unet import TextAttentionBlock
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    block = TextAttentionBlock(64, 32, encoder_channels=24, position_size=8)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    torch.nn.init.normal_(block.position_embedding, generator=gen)
    x, text = torch.randn(2, 64, 8, 8, generator=gen), torch.randn(2, 24, 5, generator=gen)
    with torch.no_grad():
        weights = block.attention_weights(x, text)
        assert weights.shape == (2, 2, 64, 5 + 64) and weights.dtype == torch.float32
        assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 64))
        _, _, v = block._queries_keys_values(x, text)
        mixed = (weights @ v).transpose(2, 3).reshape(2, 64, 64)
        assert torch.allclose(x + block.proj_out(mixed).reshape(2, 64, 8, 8), block(x, text), atol=1e-5)
        # without text the softmax runs over the pixels alone
        plain = TextAttentionBlock(64, 32)
        assert plain.attention_weights(x, None).shape == (2, 2, 64, 64)


def test_local_attention_mask_keeps_caption_tokens_near_and_padding_global():
    from projects.glide.models.text_transformer import local_attention_mask
    token_mask = torch.tensor([[True, True, True, True, False, False],
                               [False] * 6])  # a caption of 4 tokens; an empty one
    allowed = local_attention_mask(token_mask, 1)
    assert allowed.shape == (2, 1, 6, 6) and allowed.dtype == torch.bool
    expected = torch.tensor([[1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 1, 1, 1, 0, 0],
                             [0, 0, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed[0, 0], expected)
    assert allowed[1].all()  # no caption tokens: every position sees every position
    assert torch.equal(local_attention_mask(token_mask, 0)[0, 0, :4, :4], torch.eye(4, dtype=torch.bool))


def test_local_text_window_hides_far_words_from_caption_tokens():
    """With ``xf_local_window=1`` and two text blocks a caption token's state
    depends on the tokens at most two positions away and on nothing else;
    the padding positions and the pooled feature still depend on all."""
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15, 0, 0]])
    other = tokens.clone()
    other[0, 0] = 99  # change the first word
    mask = torch.tensor([[True] * 6 + [False] * 2])
    changed = {}
    for window in (None, 1):
        unet = _tiny_unet(xf_layers=2, xf_local_window=window)
        with torch.no_grad():
            a, b = unet.encode_text(tokens, mask), unet.encode_text(other, mask)
        changed[window] = (a['xf_out'] - b['xf_out']).abs().amax(dim=1)[0]  # (T,)
        assert (a['xf_proj'] - b['xf_proj']).abs().max() > 1e-3
    assert (changed[None] > 1e-3).all()
    assert (changed[1][:3] > 1e-3).all() and (changed[1][3:6] == 0).all() and (changed[1][6:] > 1e-3).all()
    with pytest.raises(ValueError, match='a text transformer with a local_window needs the token mask'):
        _tiny_unet(xf_local_window=1, xf_padding=False).encode_text(tokens, None)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f'local_window must be None or an int >= 0, got {bad!r}'):
            _tiny_unet(xf_local_window=bad)


def test_one_channel_per_group_blocks_global_colour_shifts():
    """Why the tiny configs use 8 groups: with one channel per group the
    output head normalises away each channel's spatial mean, so the text
    (here: a large change of the pooled text feature) barely moves the
    image-wide mean of eps, the quantity that sets the overall colour at
    high noise; with 4 channels per group it moves it freely."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([950])
    tokens = torch.zeros(1, 8, dtype=torch.long)
    shifts = {}
    for groups in (32, 8):
        unet = _tiny_unet(norm_groups=groups)
        for p in unet.out.conv.parameters():  # GLIDE zero-initialises the head
            torch.nn.init.normal_(p, std=0.1)
        emb = unet.encode_text(tokens, torch.ones(1, 8, dtype=torch.bool))
        other = dict(emb, xf_proj=emb['xf_proj'] + 3 * torch.randn(emb['xf_proj'].shape,
                                                                   generator=torch.Generator().manual_seed(1)))
        with torch.no_grad():
            a, b = unet(x, t, text_emb=emb)[:, :3], unet(x, t, text_emb=other)[:, :3]
        shifts[groups] = ((a - b).mean((2, 3)).abs().max().item(), (a - b).abs().max().item())
    assert shifts[32][0] < 0.02 * shifts[32][1]  # pixels move, their mean hardly does
    assert shifts[8][0] > 10 * shifts[32][0]
