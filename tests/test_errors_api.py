"""Bad input to the Python API fails loudly, naming the argument or file:
NaN/inf, wrong dtypes and ranges, non-square images, bad seeds, files that are
not checkpoints, weights holding NaN; samples stay in [-1, 1]; long prompts warn;
files are written atomically."""
import os
import warnings

import numpy as np
import pytest
import torch
from tool_helpers import CASCADE_CFG

NAN = float('nan')


@pytest.fixture(scope='module')
def cascade(ckpts):
    """The tiny shapes cascade (random weights) loaded through the public path."""
    from mmagic.apis import init_model
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    return init_model(CASCADE_CFG, ckpts['cascade'], device='cpu')


def _infer(model, **kwargs):
    return model.infer(**{'prompt': 'a red circle', 'num_inference_steps': 1, 'num_inference_steps_up': 1,
                          'seed': 0, **kwargs})


def _nan_image(size=64, channels=3):
    image = torch.zeros(1, channels, size, size)
    image[0, 0, 0, 0] = NAN
    return image


@pytest.fixture
def base_calls(cascade, monkeypatch):
    """Counts the base UNet's forward calls (0: the check came before any work)."""
    calls = []
    original = cascade.unet.forward
    monkeypatch.setattr(cascade.unet, 'forward', lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize('kwargs,error,message', [
    (dict(guidance_scale=NAN), ValueError, 'guidance_scale must be a finite number, got nan'),
    (dict(guidance_scale=float('inf')), ValueError, 'guidance_scale must be a finite number, got inf'),
    (dict(guidance_scale='abc'), TypeError, r"guidance_scale must be a number, got 'abc' \(str\)"),
    (dict(guidance_scale=None), TypeError, r'guidance_scale must be a number, got None \(NoneType\)'),
    (dict(upsample_temp=NAN), ValueError, 'upsample_temp must be a finite number >= 0, got nan'),
    (dict(upsample_temp=-1.), ValueError, 'upsample_temp must be a finite number >= 0, got -1.0'),
    (dict(init_image=_nan_image()), ValueError, 'init_image holds NaN or inf values'),
    (dict(init_image=torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), TypeError,
     'init_image is the start noise x_T: it must be a float tensor, got torch.uint8'),
    (dict(init_image_up=_nan_image(256)), ValueError, 'init_image_up holds NaN or inf values'),
    (dict(init_image_up=torch.zeros(1, 3, 64, 64)), ValueError,
     r'init_image_up must have shape \(1, 3, 256, 256\)'),
    (dict(num_inference_steps_up='abc'), ValueError, "num_inference_steps_up: .*'abc'"),
    (dict(num_inference_steps_up=-3), ValueError, 'num_inference_steps_up: .*-3'),
    (dict(num_inference_steps=0), ValueError, 'num_inference_steps: .*spec 0'),
    (dict(inpaint_image=_nan_image(), inpaint_mask=torch.ones(1, 1, 64, 64)), ValueError,
     'inpaint_image holds NaN or inf values'),
    (dict(inpaint_image=torch.zeros(1, 3, 64, 64), inpaint_mask=torch.full((1, 1, 64, 64), NAN)), ValueError,
     'inpaint_mask holds NaN or inf values'),
    (dict(inpaint_image=torch.zeros(1, 3, 64, 64, dtype=torch.uint8), inpaint_mask=torch.ones(1, 1, 64, 64)),
     TypeError, r'inpaint_image must be a float image in \[-1, 1\], got torch.uint8: convert it first'),
    (dict(inpaint_image=torch.full((1, 3, 64, 64), 200.), inpaint_mask=torch.ones(1, 1, 64, 64)), ValueError,
     r'inpaint_image must be in \[-1, 1\], got values in \[200, 200\] \(an image in \[0, 255\]'),
    (dict(inpaint_image=torch.zeros(1, 3, 64, 96), inpaint_mask=torch.ones(1, 1, 64, 96)), ValueError,
     r'inpaint_image must be square \(H = W\), got 64x96'),
    (dict(inpaint_image=np.zeros((1, 3, 64, 64), np.float32), inpaint_mask=torch.ones(1, 1, 64, 64)), TypeError,
     r'inpaint_image must be a tensor, got numpy.ndarray \(convert it with torch.from_numpy\)'),
    (dict(image=torch.full((1, 3, 64, 64), float('inf')), strength=0.5), ValueError, 'image holds NaN or inf'),
    (dict(image=torch.zeros(1, 3, 32, 64), strength=0.5), ValueError, r'image must be square \(H = W\)'),
    (dict(seed=1.9), TypeError, r'seed must be an int, got 1.9 \(float\)'),
    (dict(seed='abc'), TypeError, r"seed must be an int, got 'abc' \(str\)"),
    (dict(seed=2**70), ValueError, r'seed must be in \[-2\*\*63, 2\*\*64\), got 1180591620717411303424'),
    (dict(seed=None, generator=42), TypeError, r'generator must be a torch.Generator, got int \(pass an int as '
     r'seed=\)'),
])
def test_bad_infer_arguments_fail_before_any_work(cascade, base_calls, kwargs, error, message):
    """Every argument of both stages is checked before the base stage runs."""
    with pytest.raises(error, match=message):
        _infer(cascade, **kwargs)
    assert base_calls == []


@pytest.mark.parametrize('low_res,kwargs,error,message', [
    (torch.full((1, 3, 64, 64), 255.), {}, ValueError,
     r'low_res_img must be in \[-1, 1\], got values in \[255, 255\]'),
    (_nan_image(), {}, ValueError, 'low_res_img holds NaN or inf values'),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), {}, TypeError,
     r'low_res_img must be a float image in \[-1, 1\], got torch.uint8'),
    (np.zeros((1, 3, 64, 64), np.float32), {}, TypeError, 'low_res_img must be a tensor, got numpy.ndarray'),
    (torch.zeros(1, 3, 64, 48), {}, ValueError, r'low_res_img must be square \(H = W\), got 64x48'),
    (torch.zeros(2, 3, 64, 64), dict(batch_size=0), ValueError, 'batch_size must be a positive int, got 0'),
    (torch.zeros(2, 3, 64, 64), dict(batch_size=3), ValueError, 'low_res_img has 2 images but batch_size is 3'),
    (torch.zeros(1, 3, 64, 64), dict(upsample_temp=NAN), ValueError, 'upsample_temp must be a finite number'),
    (torch.zeros(1, 3, 64, 64), dict(init_image=_nan_image(256)), ValueError, 'init_image holds NaN or inf'),
    (torch.zeros(1, 3, 64, 64), dict(seed=1.5), TypeError, 'seed must be an int'),
])
def test_bad_infer_up_arguments(cascade, low_res, kwargs, error, message):
    with pytest.raises(error, match=message):
        cascade.infer_up(low_res, prompt='a', num_inference_steps=1, **kwargs)


def test_numpy_integer_seed_is_an_int(cascade):
    a = _infer(cascade, seed=np.int64(3))['samples']
    assert torch.equal(a, _infer(cascade, seed=3)['samples'])


def test_cascade_samples_are_clamped(cascade):
    """The upsampler of this config does not clamp its x0 guesses
    (``clip_sample=False``), so without the final clamp its samples leave [-1, 1]."""
    out = _infer(cascade, batch_size=2)
    for key in ('samples', 'low_res'):
        assert out[key].min() >= -1 and out[key].max() <= 1, key
    assert (out['samples'].abs() == 1).float().mean() > 0.01  # the clamp was needed
    up = cascade.infer_up(out['low_res'], prompt='a', num_inference_steps=1, seed=0)['samples']
    assert up.min() >= -1 and up.max() <= 1


def test_long_prompts_warn_how_many_tokens_are_dropped(cascade):
    assert cascade.tokenizer.text_ctx == 32
    with pytest.warns(UserWarning, match="prompt is 201 tokens long but GLIDE's text encoder reads at most 32: "
                      'the last 169 tokens are dropped'):
        cascade.encode_prompt('word ' * 200)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        cascade.encode_prompt('word ' * 31)  # 32 tokens: nothing dropped, no warning


def test_long_prompts_warn_in_the_clip_tokenizer():
    from projects.glide.models.clip.tokenizer import GlideCLIPTokenizer
    tokenizer = GlideCLIPTokenizer()
    with pytest.warns(UserWarning, match="prompt is 80 tokens long but the CLIP's text encoder reads at most 75: "
                      'the last 5 tokens are dropped'):
        tokens, lens = tokenizer('word ' * 80)
    assert lens.tolist() == [77]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        tokenizer('word ' * 75)


@pytest.fixture(scope='module')
def not_checkpoints(tmp_path_factory, ckpts):
    """Files that are not PyTorch checkpoints -> the reason the error gives."""
    from PIL import Image
    d = tmp_path_factory.mktemp('not_ckpts')
    (d / 'notes.txt').write_text('weights: see the README\n')
    Image.new('RGB', (8, 8)).save(d / 'image.png')
    (d / 'random.bin').write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    data = open(ckpts['cascade'], 'rb').read()
    (d / 'cut.pth').write_bytes(data[:len(data) // 3])
    return {str(d / 'notes.txt'): r'\(it is a text file\)', str(d / 'image.png'): r'\(it is a PNG image\)',
            str(d / 'random.bin'): r'\(its first bytes .* start neither a zip archive nor a pickle\)',
            str(d / 'cut.pth'): r'\(it is truncated or not a PyTorch file: '}


def test_init_model_names_a_file_that_is_not_a_checkpoint(not_checkpoints):
    from mmagic.apis import init_model
    for path, reason in not_checkpoints.items():
        with pytest.raises(RuntimeError, match=f'^{path} is not a PyTorch checkpoint {reason}') as err:
            init_model(CASCADE_CFG, path, device='cpu')
        assert 'weights_only' not in str(err.value)


def test_checkpoint_with_nan_weights_names_the_first_bad_key(ckpts, tmp_path):
    from mmagic.apis import init_model

    from projects.glide.checkpoint import NonFiniteCheckpointError
    state_dict = torch.load(ckpts['cascade'], weights_only=True)['state_dict']
    keys = list(state_dict)
    state_dict[keys[5]] = state_dict[keys[5]].clone().fill_(NAN)
    state_dict[keys[9]] = state_dict[keys[9]].clone().fill_(float('inf'))
    torch.save(dict(state_dict=state_dict), tmp_path / 'nan.pth')
    with pytest.raises(NonFiniteCheckpointError,
                       match=f'the checkpoint holds NaN or inf values in {keys[5]} \\(and 1 more tensors\\)'):
        init_model(CASCADE_CFG, str(tmp_path / 'nan.pth'), device='cpu')


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    from projects.glide import fileio
    path = tmp_path / 'model.pth'
    fileio.atomic_save({'w': torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        fileio.atomic_save({'w': lambda: 0}, path)  # torch.save cannot pickle a lambda: fails mid-write
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['model.pth']

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, 'replace', interrupted)  # killed between the write and the rename
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write_text('new', str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['model.pth']
