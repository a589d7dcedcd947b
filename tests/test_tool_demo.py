"""tools/glide_demo.py, driven as a user would (subprocesses) and in-process for its error
paths, on the tiny configs with random-weight checkpoints and a few sampling steps.
"""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tool_helpers import BASE_CFG, CASCADE_CFG, CONFIGS, REPO, fails, load_tool, run, tool


def test_demo_cascade_grid(ckpts, tmp_path):
    """The 64->256 cascade, two prompts, from another cwd."""
    r = run([sys.executable, tool('glide_demo.py'), 'a red circle on a blue background',
             'a green square on a white background', '--config', CASCADE_CFG,
             '--checkpoint', ckpts['cascade'],
             '--steps', '1', '--steps-up', '1', '--device', 'cpu', '--out', 'grid.png'],
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'GLIDE base' in r.stderr and 'GLIDE upsampler' in r.stderr  # progress bars
    with Image.open(tmp_path / 'grid.png') as im:
        assert im.mode == 'RGB'
        assert im.size[0] == 2 * 256 + 3 * 4  # two 256 px tiles side by side
        assert 256 + 2 * 4 + 10 < im.size[1] < 256 + 80
        assert im.text['prompts'].splitlines() == [
            'a red circle on a blue background', 'a green square on a white background']


def test_demo_inpainting_side_by_side(ckpts, tmp_path):
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255  # red, opaque
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'in.png')
    mask = np.full((80, 80), 255, np.uint8)
    mask[20:60, 20:60] = 0  # regenerate the centre
    Image.fromarray(mask).save(tmp_path / 'mask.png')
    r = run([sys.executable, tool('glide_demo.py'), 'a blue square on a red background',
             '--config', BASE_CFG, '--checkpoint', ckpts['base'], '--steps', '2',
             '--batch-size', '2', '--image', 'in.png', '--mask', 'mask.png',
             '--out', 'inpaint.png'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'dropping the alpha channel' in r.stderr
    out = np.asarray(Image.open(tmp_path / 'inpaint.png'))
    assert out.shape[1] == 3 * 160 + 4 * 4  # source | mask | result
    assert out.shape[0] > 2 * 64 + 3 * 4  # one row per result
    x = [4 + c * (160 + 4) + 48 for c in range(3)]  # 64 px tiles centred in 160 px cells
    source, shown_mask, result = (out[4:68, c:c + 64].astype(int) for c in x)
    assert (source == [255, 0, 0]).all()
    keep = np.asarray(Image.fromarray(mask).resize((64, 64), Image.NEAREST)) > 127
    assert (shown_mask[keep] == 255).all() and (shown_mask[~keep] == 0).all()
    assert np.abs(result - source)[keep].max() <= 1  # known region kept
    assert np.abs(result - source)[~keep].mean() > 5  # the hole is generated


@pytest.fixture(scope='module')
def demo_tool():
    return load_tool('glide_demo')


def test_demo_bad_input(demo_tool, ckpts, tmp_path, capsys, monkeypatch):
    out = ['--out', str(tmp_path / 'o.png')]
    monkeypatch.setattr(demo_tool, 'DEFAULT_CHECKPOINT', str(tmp_path / 'w' / 'missing.pth'))
    line = fails(demo_tool, out, capsys, 'default weights .*missing.pth are missing')
    assert 'tools/train.py' in line and '--checkpoint' in line
    fails(demo_tool, ['--checkpoint', str(tmp_path / 'no.pth')] + out, capsys,
           'checkpoint file not found')
    fails(demo_tool, ['--config', str(tmp_path / 'no.py'), '--checkpoint', ckpts['base']]
           + out, capsys, 'config file not found')
    fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--out', str(tmp_path / 'd' / 'o.png')],
           capsys, 'directory .* does not exist')
    fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--out', str(tmp_path / 'o.jpg')],
           capsys, 'must be a .png')
    fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--image', 'x.png'] + out, capsys,
           'needs both --image and --mask')
    fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--image', str(tmp_path / 'x.png'),
                       '--mask', str(tmp_path / 'y.png')] + out, capsys, '--image not found')
    if not torch.cuda.is_available():
        fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--device', 'cuda'] + out, capsys,
               'no CUDA GPU')
    fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--device', 'tpu'] + out, capsys,
           'unknown device')
    assert os.listdir(tmp_path) == []


def test_demo_bad_inpaint_images(demo_tool, ckpts, tmp_path, capsys):
    Image.new('RGB', (64, 64)).save(tmp_path / 'in.png')
    Image.new('L', (32, 32)).save(tmp_path / 'small.png')
    (tmp_path / 'junk.png').write_bytes(b'not a png')
    common = ['--config', BASE_CFG, '--checkpoint', ckpts['base'], '--out',
              str(tmp_path / 'o.png')]
    fails(demo_tool, common + ['--image', str(tmp_path / 'in.png'), '--mask',
                                str(tmp_path / 'small.png')], capsys, 'same size')
    fails(demo_tool, common + ['--image', str(tmp_path / 'junk.png'), '--mask',
                                str(tmp_path / 'small.png')], capsys, 'not a readable image')
    assert not (tmp_path / 'o.png').exists()


def test_demo_subprocess_cuda_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    r = run([sys.executable, tool('glide_demo.py'), '--device', 'cuda', '--checkpoint',
             __file__, '--out', 'o.png'], cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith('error: --device cuda asks for CUDA')
    assert os.listdir(tmp_path) == []


def test_demo_clip_options_switch_to_the_clip_guided_cascade(tmp_path):
    """--rerank / --clip-scale on the bundled cascade: the config with the bundled CLIP, a 256 px result."""
    r = run([sys.executable, tool('glide_demo.py'), '--rerank', '2', '--clip-scale', '5', '--steps', '2',
             '--steps-up', '1', '--device', 'cpu', '--out', 'clip.png'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    with Image.open(tmp_path / 'clip.png') as im:
        assert im.size[0] == 256 + 2 * 4


def test_demo_sampling_options_layer_flags_over_test_cfg(demo_tool):
    from projects.glide.apis import init_glide
    model = init_glide(os.path.join(CONFIGS, 'glide_tiny_shapes-64x64_clip-rerank.py'),
                       os.path.join(REPO, 'projects', 'glide', 'weights', 'glide_tiny_shapes-64x64.pth'), device='cpu')
    model.test_cfg = dict(model.test_cfg, upsample_given_low_res=False)  # not an infer argument: left out
    kwargs = demo_tool.sampling_options(model, demo_tool.parse_args(['--rerank', '3', '--steps', '7']))
    assert kwargs == dict(guidance_scale=3., num_inference_steps=7, num_inference_steps_up='fast27',
                          upsample_temp=0.997, upsample_strength=None, rerank=3,
                          show_progress=True)
    kwargs = demo_tool.sampling_options(model, demo_tool.parse_args(['--sampler', 'dpmsolver++-sde']))
    assert kwargs['sampler'] == 'dpmsolver++-sde' and kwargs['num_inference_steps'] == 25


def test_demo_sampler_flag(demo_tool, ckpts, tmp_path, capsys):
    """--sampler picks the base stage's sampler: DDPM (ancestral) draws another image than the config's
    DDIM from the same seed; a name infer does not know stops argparse with the list."""
    def draw(*flags):
        out = tmp_path / f'{len(flags)}.png'
        assert demo_tool.main(['--config', BASE_CFG, '--checkpoint', ckpts['base'], '--steps', '3',
                               '--device', 'cpu', '--out', str(out), *flags]) == 0
        with Image.open(out) as im:
            return np.asarray(im)
    ddim, ddpm = draw(), draw('--sampler', 'ddpm')
    assert ddim.shape == ddpm.shape and np.abs(ddim.astype(int) - ddpm.astype(int)).max() > 8
    with pytest.raises(SystemExit) as exit_info:
        demo_tool.parse_args(['--sampler', 'euler'])
    assert exit_info.value.code == 2
    assert "invalid choice: 'euler' (choose from" in capsys.readouterr().err


def test_demo_upsample_strength_flag_over_the_cascades_recipe(demo_tool, capsys):
    """The bundled cascade's test_cfg starts the upsampler from its input at 0.4 with 'ddim10';
    --upsample-strength S replaces the strength, 'none' gives GLIDE's start from noise."""
    from projects.glide.apis import init_glide
    model = init_glide(os.path.join(CONFIGS, 'glide_tiny_shapes-64-256.py'), device='cpu')
    def options(*argv):
        kwargs = demo_tool.sampling_options(model, demo_tool.parse_args(list(argv)))
        return kwargs['num_inference_steps_up'], kwargs['upsample_strength']
    assert options() == ('ddim10', 0.4)
    assert options('--upsample-strength', '0.25') == ('ddim10', 0.25)
    assert options('--upsample-strength', 'none', '--steps-up', 'fast27') == ('fast27', None)
    for bad, message in (('0', "must be in (0, 1] or 'none', got 0"), ('1.5', "must be in (0, 1] or 'none'"),
                         ('half', "not a number or 'none': 'half'")):
        with pytest.raises(SystemExit) as exit_info:
            demo_tool.parse_args(['--upsample-strength', bad])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_demo_clip_options_errors(demo_tool, ckpts, tmp_path, capsys):
    for bad in (['--clip-scale', '-1'], ['--clip-scale', 'nan'], ['--rerank', '0']):
        with pytest.raises(SystemExit) as exit_info:
            demo_tool.parse_args(bad)
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err
    fails(demo_tool, ['--config', BASE_CFG, '--checkpoint', ckpts['base'], '--rerank', '2', '--steps', '1',
                      '--out', str(tmp_path / 'o.png')], capsys,
          'need a config with a noise-aware CLIP .* has none')
    assert not (tmp_path / 'o.png').exists()
