"""The command-line tools, driven as a user would (subprocesses), on the tiny
configs with random-weight checkpoints and a few sampling steps.

Also the engine pieces they use (image saver hook, grids, upsampler metric)
in-process.
"""
import importlib.util
import json
import os
import os.path as osp
import re
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'projects', 'glide', 'configs')
BASE_CFG = osp.join(CONFIGS, 'glide_tiny_shapes-64x64.py')
CASCADE_CFG = osp.join(CONFIGS, 'glide_tiny_shapes-64-256.py')
FAST = ['model.test_cfg.num_inference_steps=2', 'test_dataloader.batch_size=2',
        'test_dataloader.num_workers=0']
PROMPTS = [
    'a red circle on a blue background',
    'A green triangle at the top, white background.',  # held out
    'hello world',  # outside the shapes grammar
    'a yellow square below a red circle on a black background',  # held out
    'a small blue square on the left against an orange background',
]
PNG_RE = re.compile(r'^(\d{5})_([a-z0-9-]+)\.png$')


def env():
    e = dict(os.environ)
    e['PYTHONPATH'] = REPO + (os.pathsep + e['PYTHONPATH'] if e.get('PYTHONPATH') else '')
    e.setdefault('OMP_NUM_THREADS', '2')
    return e


def run(args, cwd, timeout=240, extra_env=None):
    e = env()
    e.update(extra_env or {})
    return subprocess.run(args, cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=timeout)


def tool(name):
    return osp.join(REPO, 'tools', name)


def load_tool(name):
    """Import tools/NAME.py as a module (for the fast in-process error paths)."""
    spec = importlib.util.spec_from_file_location(f'glide_tool_{name}', tool(f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def saved_pngs(out_dir):
    return sorted(f for f in os.listdir(out_dir) if PNG_RE.match(f))


def png_meta(path):
    with Image.open(path) as im:
        im.load()
        return dict(im.text)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    """Random-weight checkpoints of both tiny configs."""
    from mmagic.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import projects.glide  # noqa: F401
    init_default_scope('mmagic')
    d = tmp_path_factory.mktemp('ckpts')
    paths = {}
    torch.manual_seed(0)
    for key, cfg_path in (('base', BASE_CFG), ('cascade', CASCADE_CFG)):
        model = MODELS.build(Config.fromfile(cfg_path).model)
        paths[key] = str(d / f'{key}.pth')
        torch.save(dict(state_dict=model.state_dict()), paths[key])
    return paths


@pytest.fixture(scope='module')
def txt_run(ckpts, tmp_path_factory):
    """tools/test.py, one process, captions from a .txt file."""
    d = tmp_path_factory.mktemp('txt_run')
    prompt_file = d / 'prompts.txt'
    prompt_file.write_text('\n'.join(PROMPTS[:3]) + '\n\n' + '\n'.join(PROMPTS[3:]) + '\n')
    out_dir = d / 'pngs'
    r = run([sys.executable, tool('test.py'), BASE_CFG, ckpts['base'], '--work-dir',
             str(d / 'wd'), '--prompts', 'prompts.txt', '--out-dir', 'pngs',
             '--cfg-options', *FAST], cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(dir=d, out_dir=str(out_dir), work_dir=str(d / 'wd'), result=r)


# --------------------------------------------------------------- test.py
def test_test_py_prompt_txt(txt_run):
    out_dir = txt_run['out_dir']
    names = saved_pngs(out_dir)
    from projects.glide.engine import image_filename
    assert names == [image_filename(i, p) for i, p in enumerate(PROMPTS)]
    assert names[1] == '00001_a-green-triangle-at-the-top-white-background.png'
    for i, name in enumerate(names):
        path = osp.join(out_dir, name)
        with Image.open(path) as im:
            assert (im.size, im.mode) == ((64, 64), 'RGB')
        meta = png_meta(path)
        assert (meta['prompt'], meta['seed'], meta['index']) == (PROMPTS[i], str(i), str(i))
    # grid: ceil(sqrt(5)) = 3 columns of 160 px cells (64 px images), 2 rows
    with Image.open(osp.join(out_dir, 'grid.png')) as grid:
        assert grid.size[0] == 3 * 160 + 4 * 4
        assert grid.size[1] > 2 * 64 + 3 * 4
    assert set(os.listdir(out_dir)) == set(names) | {'grid.png'}
    metrics = json.load(open(osp.join(txt_run['work_dir'], 'metrics.json')))
    assert metrics['shapes/unparsed/count'] == 1
    assert metrics['shapes/held_out/count'] == 2
    assert metrics['shapes/seen/count'] == 2
    for key in ('seen/background', 'seen/shape_color', 'seen/shape_class', 'seen/size',
                'seen/position', 'seen/shape_count', 'seen/all', 'held_out/relation'):
        assert 0 <= metrics[f'shapes/{key}'] <= 100
    assert 'metrics.json' in txt_run['result'].stdout


def test_test_py_config_test_set_cascade(ckpts, tmp_path):
    """Without --prompts: the 64-256 config's own test set (held-out shapes
    drawn at 256 with their 64 px versions), scored by UpsamplerPSNR."""
    r = run([sys.executable, tool('test.py'), CASCADE_CFG, ckpts['cascade'], '--work-dir', 'wd',
             '--cfg-options', 'model.test_cfg.num_inference_steps=1',
             'model.test_cfg.num_inference_steps_up=1', 'test_dataloader.batch_size=2',
             'test_dataloader.num_workers=0', 'test_dataloader.dataset.size=2',
             'test_evaluator.type=UpsamplerPSNR'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from projects.glide.datasets import ShapesDataset
    from projects.glide.engine import image_filename
    ds = ShapesDataset('held_out', size=2, seed=1)
    out_dir = tmp_path / 'wd' / 'images'
    names = saved_pngs(out_dir)
    assert names == [image_filename(i, ds.get_scene(i)[1]) for i in range(2)]
    for name in names:
        with Image.open(out_dir / name) as im:
            assert im.size == (256, 256)
    with Image.open(out_dir / 'grid.png') as grid:
        assert grid.size[0] == 2 * 256 + 3 * 4
    metrics = json.load(open(tmp_path / 'wd' / 'metrics.json'))
    assert metrics['upsampler/count'] == 2
    assert {'upsampler/model/psnr', 'upsampler/bicubic/psnr', 'upsampler/psnr_gain',
            'upsampler/model/ssim', 'upsampler/bicubic/ssim',
            'upsampler/mismatched_low_res'} <= set(metrics)
    assert metrics['upsampler/bicubic/psnr'] > 15


def test_dist_test_sh_saves_each_image_once(ckpts, txt_run, tmp_path):
    """2 CPU processes (gloo) on a 5-caption .json set: DefaultSampler pads
    rank 1 with item 0; it is neither saved again nor scored twice, and the
    images equal the single-process ones (per-item seeds)."""
    prompts = [p if i % 2 else dict(prompt=p, seed=i) for i, p in enumerate(PROMPTS)]
    (tmp_path / 'prompts.json').write_text(json.dumps(prompts))
    r = run(['bash', tool('dist_test.sh'), BASE_CFG, ckpts['base'], '2', '--work-dir', 'wd',
             '--prompts', 'prompts.json', '--cfg-options', *FAST], cwd=tmp_path,
            extra_env=dict(PORT=str(free_port()), PYTHON=sys.executable))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    out_dir = tmp_path / 'wd' / 'images'
    names = saved_pngs(out_dir)
    assert names == saved_pngs(txt_run['out_dir'])
    assert sorted(os.listdir(out_dir)) == sorted(names + ['grid.png'])
    for i, name in enumerate(names):
        meta = png_meta(out_dir / name)
        # round robin: item i is rank i % 2's; rank 1's padded copy of item 0 is skipped
        assert meta['rank'] == str(i % 2), (name, meta)
        a = np.asarray(Image.open(out_dir / name), np.int16)
        b = np.asarray(Image.open(osp.join(txt_run['out_dir'], name)), np.int16)
        assert np.abs(a - b).mean() < 0.5, name
    metrics = json.load(open(tmp_path / 'wd' / 'metrics.json'))
    counts = [metrics[f'shapes/{g}/count'] for g in ('seen', 'held_out', 'unparsed')]
    assert counts == [2, 2, 1]


def test_test_py_mismatched_checkpoint(ckpts, tmp_path):
    r = run([sys.executable, tool('test.py'), BASE_CFG, ckpts['cascade'], '--work-dir', 'wd',
             '--cfg-options', *FAST, 'test_dataloader.dataset.size=2'], cwd=tmp_path)
    assert r.returncode != 0
    assert re.search(r'^error: checkpoint .*cascade.pth does not fit config', r.stderr, re.M)
    assert 'unet_up' in r.stderr
    assert not (tmp_path / 'wd' / 'images').exists()
    assert not (tmp_path / 'wd' / 'metrics.json').exists()


def test_test_py_missing_config_subprocess(tmp_path):
    r = run([sys.executable, tool('test.py'), 'nope.py', 'nope.pth'], cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ['error: config file not found: nope.py']
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope='module')
def test_tool():
    return load_tool('test')


def _fails(mod, argv, capsys, match):
    rc = mod.main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def test_test_py_bad_input(test_tool, ckpts, tmp_path, capsys):
    wd = str(tmp_path / 'wd')
    common = ['--work-dir', wd]
    _fails(test_tool, [BASE_CFG, str(tmp_path / 'x.pth')] + common, capsys,
           'checkpoint file not found')
    (tmp_path / 'empty.pth').write_bytes(b'')
    _fails(test_tool, [BASE_CFG, str(tmp_path / 'empty.pth')] + common, capsys,
           'checkpoint file is empty')
    (tmp_path / 'empty.txt').write_text('\n  \n')
    _fails(test_tool, [BASE_CFG, ckpts['base'], '--prompts', str(tmp_path / 'empty.txt')]
           + common, capsys, 'prompt file is empty')
    _fails(test_tool, [BASE_CFG, ckpts['base'], '--prompts', str(tmp_path / 'none.txt')]
           + common, capsys, 'prompt file not found')
    (tmp_path / 'afile').write_text('x')
    _fails(test_tool, [BASE_CFG, ckpts['base'], '--out-dir', str(tmp_path / 'afile' / 'imgs')]
           + common, capsys, 'cannot create out dir .* is not a directory')
    _fails(test_tool, [BASE_CFG, ckpts['base'], '--out-dir', str(tmp_path / 'afile')]
           + common, capsys, 'exists and is not a directory')
    _fails(test_tool, [BASE_CFG, ckpts['base'], '--work-dir', '/proc/glide_wd'],
           capsys, 'not writable')
    _fails(test_tool, [CONFIGS + '/glide_ddim-classifier-free_laion-64x64.py',
                       ckpts['base']] + common, capsys, 'no test_dataloader.*--prompts')
    if not torch.cuda.is_available():
        _fails(test_tool, [BASE_CFG, ckpts['base'], '--cfg-options', 'device=cuda'] + common,
               capsys, 'device=cuda asks for CUDA')
        _fails(test_tool, [BASE_CFG, ckpts['base'], '--launcher', 'pytorch'] + common,
               capsys, 'nccl.*env_cfg.dist_cfg.backend=gloo')
    assert sorted(os.listdir(tmp_path)) == ['afile', 'empty.pth', 'empty.txt']


def test_dist_test_sh_usage(tmp_path):
    r = run(['bash', tool('dist_test.sh'), 'a.py'], cwd=tmp_path)
    assert r.returncode == 2 and 'usage' in r.stderr
    r = run(['bash', tool('dist_test.sh'), 'a.py', 'b.pth', 'two'], cwd=tmp_path)
    assert r.returncode == 2 and 'NPROC must be a positive integer' in r.stderr


# ---------------------------------------------------------- glide_demo.py
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
    line = _fails(demo_tool, out, capsys, 'default weights .*missing.pth are missing')
    assert 'tools/train.py' in line and '--checkpoint' in line
    _fails(demo_tool, ['--checkpoint', str(tmp_path / 'no.pth')] + out, capsys,
           'checkpoint file not found')
    _fails(demo_tool, ['--config', str(tmp_path / 'no.py'), '--checkpoint', ckpts['base']]
           + out, capsys, 'config file not found')
    _fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--out', str(tmp_path / 'd' / 'o.png')],
           capsys, 'directory .* does not exist')
    _fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--out', str(tmp_path / 'o.jpg')],
           capsys, 'must be a .png')
    _fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--image', 'x.png'] + out, capsys,
           'needs both --image and --mask')
    _fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--image', str(tmp_path / 'x.png'),
                       '--mask', str(tmp_path / 'y.png')] + out, capsys, '--image not found')
    if not torch.cuda.is_available():
        _fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--device', 'cuda'] + out, capsys,
               'no CUDA GPU')
    _fails(demo_tool, ['--checkpoint', ckpts['cascade'], '--device', 'tpu'] + out, capsys,
           'unknown device')
    assert os.listdir(tmp_path) == []


def test_demo_bad_inpaint_images(demo_tool, ckpts, tmp_path, capsys):
    Image.new('RGB', (64, 64)).save(tmp_path / 'in.png')
    Image.new('L', (32, 32)).save(tmp_path / 'small.png')
    (tmp_path / 'junk.png').write_bytes(b'not a png')
    common = ['--config', BASE_CFG, '--checkpoint', ckpts['base'], '--out',
              str(tmp_path / 'o.png')]
    _fails(demo_tool, common + ['--image', str(tmp_path / 'in.png'), '--mask',
                                str(tmp_path / 'small.png')], capsys, 'same size')
    _fails(demo_tool, common + ['--image', str(tmp_path / 'junk.png'), '--mask',
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


# --------------------------------------------------------------- train.py
def test_train_then_resume(tmp_path):
    opts = ['train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'default_hooks.checkpoint.interval=2',
            'default_hooks.logger.interval=1']
    r = run([sys.executable, tool('train.py'), BASE_CFG, '--work-dir', 'wd', '--cfg-options',
             'train_cfg.max_iters=4', *opts], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / 'wd' / 'iter_4.pth').is_file()
    # resume with --amp: bf16 autocast also on the CPU, same checkpoint state
    r = run([sys.executable, tool('train.py'), BASE_CFG, '--work-dir', 'wd', '--resume', '--amp',
             '--cfg-options', 'train_cfg.max_iters=6', *opts], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 4' in r.stdout + r.stderr
    dumped = (tmp_path / 'wd' / 'glide_tiny_shapes-64x64.py').read_text()
    assert "type='BF16AutocastOptimWrapper'" in dumped
    from projects.glide.checkpoint import load_checkpoint_file
    ckpt = load_checkpoint_file(str(tmp_path / 'wd' / 'iter_6.pth'))
    assert ckpt['meta']['iter'] == 6
    assert 'ema_state_dict' in ckpt


def test_train_init_from_keeps_the_weights_and_initialises_missing_ones(ckpts, tmp_path):
    from projects.glide.checkpoint import load_checkpoint_file
    weights = load_checkpoint_file(ckpts['base'])['state_dict']
    # a checkpoint that lacks a parameter of the model (here: the padding embedding)
    new_keys = ['unet.padding_embedding']
    old = {k: v for k, v in weights.items() if k not in new_keys}
    torch.save(dict(state_dict=old), tmp_path / 'old.pth')
    opts = ['train_cfg.max_iters=1', 'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'default_hooks.checkpoint.interval=1']
    r = run([sys.executable, tool('train.py'), BASE_CFG, '--work-dir', 'wd', '--init-from', 'old.pth',
             '--cfg-options', *opts], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (f'--init-from old.pth: {len(old)} tensors loaded, 1 initialised: unet.padding_embedding'
            in r.stdout)
    start = load_checkpoint_file(str(tmp_path / 'wd' / 'init_from.pth'))
    assert start['meta'] == dict(init_from='old.pth', initialised=new_keys)
    assert all(torch.equal(start['state_dict'][k], v) for k, v in old.items())
    fresh = start['state_dict']['unet.padding_embedding']  # Text2ImUNet's init: N(0, 0.01)
    assert fresh.shape == weights['unet.padding_embedding'].shape
    assert not torch.equal(fresh, weights['unet.padding_embedding'])
    assert abs(fresh.float().std().item() - 0.01) < 0.001
    assert 'Load checkpoint from wd/init_from.pth' in r.stdout + r.stderr
    trained = load_checkpoint_file(str(tmp_path / 'wd' / 'iter_1.pth'))
    assert trained['meta']['iter'] == 1
    # a checkpoint of another model is refused before training starts
    r = run([sys.executable, tool('train.py'), BASE_CFG, '--work-dir', 'wd2', '--init-from',
             ckpts['cascade']], cwd=tmp_path)
    assert r.returncode != 0
    assert f'error: --init-from {ckpts["cascade"]} does not fit the config: ' in r.stderr
    assert 'unexpected keys: ' in r.stderr and not (tmp_path / 'wd2' / 'init_from.pth').exists()
    r = run([sys.executable, tool('train.py'), BASE_CFG, '--resume', '--init-from', 'old.pth'],
            cwd=tmp_path)
    assert r.returncode != 0
    assert 'error: argument --init-from: not allowed with argument --resume' in r.stderr
    r = run([sys.executable, tool('train.py'), BASE_CFG, '--init-from', 'none.pth'], cwd=tmp_path)
    assert r.returncode != 0
    assert 'error: --init-from none.pth cannot be used: checkpoint file not found: none.pth' in r.stderr


def test_train_init_rename_moves_the_blocks_of_a_model_that_gained_attention(tmp_path, capsys):
    """Attention added at 32x32 goes before that level's upsampler, which
    moves from ``out_blocks.5.1`` to ``out_blocks.5.2``."""
    from mmagic.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from projects.glide.checkpoint import CheckpointMismatchError, load_checkpoint_file
    init_default_scope('mmagic')
    train = load_tool('train')
    old_cfg, cfg = Config.fromfile(BASE_CFG), Config.fromfile(BASE_CFG)
    old_cfg.model.unet.attention_res, cfg.model.unet.attention_res = (16, ), (16, 32)
    cfg.work_dir = str(tmp_path / 'wd')
    old = MODELS.build(old_cfg.model).state_dict()
    old_path = str(tmp_path / 'old.pth')
    torch.save(dict(state_dict=old), old_path)
    with pytest.raises(CheckpointMismatchError, match=r'unexpected keys: unet\.out_blocks\.5\.1\.'):
        train.complete_checkpoint(cfg, old_path)
    move = {'unet.out_blocks.5.1.': 'unet.out_blocks.5.2.'}
    start = load_checkpoint_file(train.complete_checkpoint(cfg, old_path, move))
    assert start['meta']['renamed'] == move
    weights = start['state_dict']
    moved = [k for k in old if k.startswith('unet.out_blocks.5.1.')]
    assert len(moved) == 10 and not any(k in weights for k in moved)
    for k, v in old.items():
        assert torch.equal(weights[k.replace('unet.out_blocks.5.1.', 'unet.out_blocks.5.2.')], v)
    # the initialised tensors are the five new attention blocks' and nothing else
    blocks = tuple(f'unet.{b}.1.' for b in ('in_blocks.4', 'in_blocks.5', 'out_blocks.3', 'out_blocks.4',
                                            'out_blocks.5'))
    added = start['meta']['initialised']
    assert added == sorted(k for k in MODELS.build(cfg.model).state_dict() if k.startswith(blocks))
    assert len(added) == 45
    # mistakes are refused before anything is built or trained
    capsys.readouterr()
    assert train.main([BASE_CFG, '--init-rename', 'a.=b.']) == 1
    assert 'error: --init-rename needs --init-from' in capsys.readouterr().err
    assert train.main([BASE_CFG, '--init-from', old_path, '--init-rename', 'unet.out_blocks.5.1.']) == 1
    assert ('error: --init-rename takes OLD=NEW key prefixes, got unet.out_blocks.5.1.'
            in capsys.readouterr().err)
    wd = ['--work-dir', str(tmp_path / 'wd2')]
    assert train.main([BASE_CFG, *wd, '--init-from', old_path, '--init-rename', 'unet.outblocks.=x.']) == 1
    assert (f'error: --init-from {old_path} cannot be used: --init-rename: no checkpoint key starts with '
            'unet.outblocks.' in capsys.readouterr().err)
    assert train.main([BASE_CFG, *wd, '--init-from', old_path, '--init-rename',
                       'unet.out_blocks.5.1.=unet.out_blocks.5.0.']) == 1
    assert ('--init-rename: renamed keys would replace other keys of the checkpoint'
            in capsys.readouterr().err)
    assert not (tmp_path / 'wd2' / 'init_from.pth').exists()


def test_train_init_zero_adds_text_blocks_that_start_as_the_identity(tmp_path, capsys):
    """Text transformer blocks added with zero output projections leave the
    text features, and so what the model draws, as the checkpoint had them."""
    from mmagic.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from projects.glide.checkpoint import load_checkpoint_file
    init_default_scope('mmagic')
    train = load_tool('train')
    old_cfg, cfg = Config.fromfile(BASE_CFG), Config.fromfile(BASE_CFG)
    cfg.model.unet.xf_layers = 4
    cfg.work_dir = str(tmp_path / 'wd')
    torch.manual_seed(0)
    old_model = MODELS.build(old_cfg.model).eval()
    old_path = str(tmp_path / 'old.pth')
    torch.save(dict(state_dict=old_model.state_dict()), old_path)
    start = load_checkpoint_file(train.complete_checkpoint(cfg, old_path, zero=('.c_proj.', )))
    new = [f'unet.transformer.resblocks.{i}.' for i in (2, 3)]
    assert start['meta']['initialised'] == sorted(k for k in start['state_dict'] if k.startswith(tuple(new)))
    assert start['meta']['zeroed'] == sorted(f'{b}{m}.c_proj.{p}' for b in new for m in ('attn', 'mlp')
                                             for p in ('bias', 'weight'))
    weights = start['state_dict']
    assert all(not weights[k].any() for k in start['meta']['zeroed'])
    assert weights[new[0] + 'attn.c_qkv.weight'].std() > 0.01  # the rest keeps its initial values
    model = MODELS.build(cfg.model).eval()
    model.load_state_dict(weights)
    tokens, mask = model.tokenizer(['a red circle above a blue square on a yellow background'], device='cpu')
    with torch.no_grad():
        got, want = model.unet.encode_text(tokens, mask), old_model.unet.encode_text(tokens, mask)
    assert got['xf_out'].shape == (1, 48, 32)
    assert torch.allclose(got['xf_out'], want['xf_out'], atol=1e-6)
    assert torch.allclose(got['xf_proj'], want['xf_proj'], atol=1e-6)
    # without --init-zero the new blocks change the text features
    model.load_state_dict(load_checkpoint_file(train.complete_checkpoint(cfg, old_path))['state_dict'])
    with torch.no_grad():
        assert (model.unet.encode_text(tokens, mask)['xf_out'] - want['xf_out']).abs().max() > 1e-2
    # it never zeroes the checkpoint's own weights, and needs --init-from
    with pytest.raises(KeyError, match=r'--init-zero: no initialised key contains unet\.out\.'):
        train.complete_checkpoint(cfg, old_path, zero=('.c_proj.', 'unet.out.'))
    capsys.readouterr()
    assert train.main([BASE_CFG, '--init-zero', '.c_proj.']) == 1
    assert 'error: --init-zero needs --init-from' in capsys.readouterr().err
    wd = ['--work-dir', str(tmp_path / 'wd2')]
    assert train.main([BASE_CFG, *wd, '--init-from', old_path, '--init-zero', '.c_proj.']) == 1
    assert (f'error: --init-from {old_path} cannot be used: --init-zero: no initialised key contains .c_proj.'
            in capsys.readouterr().err)
    assert not (tmp_path / 'wd2' / 'init_from.pth').exists()


def test_dist_train_sh_two_cpu_processes(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('checks the CPU-only (gloo) path')
    r = run(['bash', tool('dist_train.sh'), BASE_CFG, '2', '--work-dir', 'wd', '--cfg-options',
             'train_cfg.max_iters=2', 'train_dataloader.batch_size=2',
             'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
             'default_hooks.checkpoint.interval=2'], cwd=tmp_path,
            extra_env=dict(PORT=str(free_port()), PYTHON=sys.executable))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert (tmp_path / 'wd' / 'iter_2.pth').is_file()


def test_bf16_autocast_optim_wrapper_casts_forward_and_keeps_fp32_state():
    from projects.glide.engine import BF16AutocastOptimWrapper
    layer = torch.nn.Linear(4, 3)
    wrapper = BF16AutocastOptimWrapper(torch.optim.SGD(layer.parameters(), lr=0.1))
    x = torch.randn(2, 4)
    with wrapper.optim_context(layer):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), atol=3e-2, rtol=3e-2)
    before = layer.weight.detach().clone()
    wrapper.update_params(y.float().sum())
    assert layer.weight.dtype == torch.float32
    assert not torch.equal(layer.weight, before)
    assert set(wrapper.state_dict()) == {'state', 'param_groups'}


def test_train_missing_config(tmp_path):
    r = run([sys.executable, tool('train.py'), 'nope.py'], cwd=tmp_path)
    assert r.returncode != 0 and 'config file not found' in r.stderr


# ------------------------------------------------ engine pieces (in-process)
class _Logger:
    def info(self, msg):
        pass

    warning = info


def test_saver_hook_skips_sampler_padding(tmp_path, monkeypatch):
    """Two simulated ranks over 5 items, batches of 2: rank 1's padded copy
    of item 0 is not saved; rank 0 builds the grid from the files."""
    import mmengine.dataset.sampler as sampler_mod
    from mmengine.dataset import DefaultSampler

    from projects.glide.datasets import PromptSetDataset
    from projects.glide.engine import hooks as hooks_mod
    ds = PromptSetDataset(prompts=PROMPTS)
    monkeypatch.setattr(hooks_mod, 'barrier', lambda: None)
    saved = {}
    for rank in (1, 0):  # rank 0 last: it writes the grid
        monkeypatch.setattr(sampler_mod, 'get_dist_info', lambda r=rank: (r, 2))
        monkeypatch.setattr(hooks_mod, 'get_dist_info', lambda r=rank: (r, 2))
        sampler = DefaultSampler(ds, shuffle=False)
        order = list(sampler)
        assert order == ([0, 2, 4] if rank == 0 else [1, 3, 0])
        runner = types.SimpleNamespace(
            work_dir=str(tmp_path), timestamp='20240101_000000', logger=_Logger(),
            test_dataloader=types.SimpleNamespace(dataset=ds, sampler=sampler))
        hook = hooks_mod.GlideImageSaverHook(out_dir=str(tmp_path / 'imgs'))
        hook.before_test(runner)
        for b in range(0, len(order), 2):
            items = [dict(ds[i], image=torch.full((3, 8, 8), 40 * i, dtype=torch.uint8))
                     for i in order[b:b + 2]]
            hook.after_test_iter(runner, b // 2, None, items)
        hook.after_test_epoch(runner)
        saved[rank] = hook.saved
    assert [n[:5] for n in saved[0]] == ['00000', '00002', '00004']
    assert [n[:5] for n in saved[1]] == ['00001', '00003']
    names = saved_pngs(tmp_path / 'imgs')
    assert len(names) == 5
    for i, name in enumerate(names):
        assert png_meta(tmp_path / 'imgs' / name)['rank'] == str(i % 2)
    assert (tmp_path / 'imgs' / 'grid.png').is_file()


def test_grid_ignores_stale_files_of_other_runs(tmp_path):
    from projects.glide.datasets import PromptSetDataset
    from projects.glide.engine import GlideImageSaverHook, save_png
    out = tmp_path / 'imgs'
    out.mkdir()
    save_png(np.zeros((8, 8, 3), np.uint8), str(out / '00001_old-prompt.png'),
             dict(prompt='old prompt', glide_run='older'))
    ds = PromptSetDataset(prompts=['p0'])
    runner = types.SimpleNamespace(
        work_dir=str(tmp_path), timestamp='now', logger=_Logger(),
        test_dataloader=types.SimpleNamespace(dataset=ds, sampler=None))
    hook = GlideImageSaverHook(out_dir=str(out), grid_ncols=1)
    hook.before_test(runner)
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    hook.after_test_iter(runner, 0, None, [dict(ds[0], image=image)])
    hook.after_test_epoch(runner)
    with Image.open(out / 'grid.png') as grid:
        assert grid.size[0] == 160 + 2 * 4  # one tile only: the stale one is left out


def test_prompt_slug_and_filename():
    from projects.glide.engine import image_filename, prompt_slug
    slug = prompt_slug('A Red  circle, on a BLUE background!')
    assert slug == 'a-red-circle-on-a-blue-background'
    assert prompt_slug('¡¿') == 'prompt'
    assert prompt_slug('café') == 'cafe'
    long = prompt_slug(' '.join(['word'] * 40))
    assert len(long) <= 60 and not long.endswith('-')
    assert image_filename(7, 'x/y') == '00007_x-y.png'


def test_text_binding_probe_reads_linear_codes_and_nothing_else():
    probe = load_tool('text_binding_probe')
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (900, ), generator=gen)
    noise = torch.randn(900, 16, generator=gen)
    coded = noise.clone()
    coded[:, :3] += 3 * torch.nn.functional.one_hot(labels, 3)  # the label, linearly readable
    assert probe.linear_probe_accuracy(coded, labels.tolist(), 3) > 95
    assert abs(probe.linear_probe_accuracy(noise, labels.tolist(), 3) - 100 / 3) < 10
    with pytest.raises(ValueError, match='train_fraction 1.0 leaves no training or no test rows of 900'):
        probe.linear_probe_accuracy(coded, labels.tolist(), 3, train_fraction=1.0)


def test_text_binding_probe_captions_and_word_positions():
    from projects.glide.datasets.shapes import parse_caption
    from projects.glide.models.tokenizer import GlideTokenizer
    probe = load_tool('text_binding_probe')
    rows = probe.binding_captions(seed=0)
    assert len(rows) == 8 * 7 * 6 * 6 == len({r['caption'] for r in rows})
    assert rows != probe.binding_captions(seed=1) and rows == probe.binding_captions(seed=0)
    tokenizer = GlideTokenizer(text_ctx=32)
    for row in rows[:50]:
        scene = parse_caption(row['caption'])
        assert [(s.color, s.kind) for s in scene.shapes] == [(row['c1'], row['k1']), (row['c2'], row['k2'])]
        assert scene.background == row['bg'] and row['k1'] != row['k2'] and row['c1'] != row['c2']
        tokens = tokenizer.encode(row['caption'])
        positions = probe.word_positions(tokenizer, row['caption'])
        assert positions.pop('pad') == len(tokens)
        for word, index in positions.items():
            assert tokens[index] == tokenizer.encode(' ' + row[word])[-1]
    # a relation of several words moves the second shape's words along
    caption = probe.two_shape_caption('purple', 'circle', 'to the left of', 'white', 'square', 'red')
    assert caption == 'a purple circle to the left of a white square on a red background'
    assert probe.word_positions(tokenizer, caption) == dict(c1=1, k1=2, c2=len(tokenizer.encode(
        'a purple circle to the left of a white')) - 1, k2=len(tokenizer.encode(
            'a purple circle to the left of a white square')) - 1, pad=len(tokenizer.encode(caption)))


def test_text_binding_probe_shape_pixels_keep_each_shape_to_itself():
    from projects.glide.datasets.shapes import Scene, Shape
    probe = load_tool('text_binding_probe')
    scene = Scene('white', [Shape('square', 'red', 'large', center=(0.25, 0.5), extent=0.25),
                            Shape('circle', 'blue', 'small', center=(0.6, 0.5), extent=0.5)], 'to the left of')
    pixels = probe.shape_pixels(scene, 16)
    assert pixels.shape == (2, 16, 16) and pixels.dtype == bool
    # the square covers columns 2-5 and rows 6-9 in full
    assert pixels[0].sum() == 16 and pixels[0][6:10, 2:6].all()
    # the circle (radius 4 pixels at column 9.6, row 8) loses the pixels it shares with the square
    assert 40 < pixels[1].sum() < 16 * 3.14 and not (pixels[0] & pixels[1]).any()
    assert pixels[1][8, 9] and not pixels[1][8, 5]


def test_text_binding_probe_routes_each_kind_word_by_its_colour_word():
    """Inside ``kind_words_routed_by_colour`` a text attention block mixes
    its values with the kind words' weights scaled by 2 x the pixel's share
    of c1 / c2 attention (renormalised), on the routed rows only; outside
    it, the block is as before."""
    from projects.glide.models.unet import TextAttentionBlock
    probe = load_tool('text_binding_probe')
    torch.manual_seed(0)
    block = TextAttentionBlock(32, num_head_channels=16, encoder_channels=8).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, text = torch.randn(3, 32, 4, 4), torch.randn(3, 8, 6)
    positions = torch.tensor([[[0, 1], [3, 4]], [[1, 2], [4, 5]]])  # rows 0 and 1: (colour, kind) per shape
    with torch.no_grad():
        plain = block(x, text)
        weights = block.attention_weights(x, text)
        _, _, v = block.queries_keys_values(x, text)
        shares = []
        for row, ((c1, k1), (c2, k2)) in enumerate(positions.tolist()):
            on_c1, on_c2 = weights[row, :, :, c1].mean(0), weights[row, :, :, c2].mean(0)
            share = on_c1 / (on_c1 + on_c2)
            shares.append(share)
            weights[row, :, :, k1] *= 2 * share
            weights[row, :, :, k2] *= 2 - 2 * share
        assert torch.cat(shares).min() < 0.4 and torch.cat(shares).max() > 0.5  # weight moves both ways
        weights /= weights.sum(-1, keepdim=True)
        expected = x + block.proj_out((weights @ v).transpose(2, 3).reshape(3, 32, -1)).reshape(3, 32, 4, 4)
        with probe.kind_words_routed_by_colour(torch.nn.Sequential(block), positions):
            routed = block(x, text)
            no_text = block(x, None)
        torch.testing.assert_close(routed, expected)
        assert (routed[:2] - plain[:2]).abs().max() > 1e-3
        torch.testing.assert_close(routed[2], plain[2])  # a row beyond the positions: not routed
        torch.testing.assert_close(no_text, block(x, None))
        torch.testing.assert_close(block(x, text), plain)  # the class's forward again


def test_text_binding_probe_boxes_read_only_their_own_phrase():
    """Inside ``boxes_read_own_phrase`` the UNet's first B rows give what the
    plain UNet gives from the caption's token states where no box is, and
    from shape 1's phrase states where shape 1's box covers every map; a row
    beyond B reads the caption; afterwards the UNet is as before."""
    from projects.glide.models import Text2ImUNet
    probe = load_tool('text_binding_probe')
    torch.manual_seed(0)
    unet = Text2ImUNet(image_size=16, base_channels=32, channel_mult=(1, 2), resblocks_per_downsample=1,
                       attention_res=(8, 16), num_head_channels=32, text_ctx=6, xf_width=32, xf_layers=1,
                       xf_heads=1).eval()
    for name, p in unet.named_parameters():
        if 'encoder_kv' in name or 'proj_out' in name:
            torch.nn.init.normal_(p, std=0.3)  # the text decides the output
    tokens, ones = torch.randint(0, 1000, (3, 6)), torch.ones(3, 6, dtype=torch.bool)
    x, t = torch.randn(3, 3, 16, 16), torch.full((3, ), 500)
    with torch.no_grad():
        caption = unet.encode_text(tokens, ones)
        phrases = unet.encode_text(torch.randint(0, 1000, (4, 6)), ones[:1].expand(4, -1))['xf_out']
        phrases = phrases.reshape(2, 2, 32, 6)  # (B, shape, width, T)
        plain = unet(x, t, text_emb=caption)
        from_shape_1 = unet(x, t, text_emb=dict(caption, xf_out=torch.cat([phrases[:, 0], caption['xf_out'][2:]])))
        assert (from_shape_1[:2] - plain[:2]).abs().max() > 1e-2
        for boxes, expected in ((0, plain), (1, from_shape_1)):
            boxes = {side: torch.tensor([bool(boxes), False])[None, :, None].expand(2, 2, side * side)
                     for side in (16, 8)}
            with probe.boxes_read_own_phrase(unet, phrases, boxes):
                out = unet(x, t, tokens, ones)
            torch.testing.assert_close(out[:2], expected[:2], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out[2], plain[2], atol=1e-4, rtol=1e-4)
        assert 'encode_text' not in vars(unet)
        torch.testing.assert_close(unet(x, t, tokens, ones), plain)  # the class's forward again


def test_text_binding_probe_sampling_from_keeps_the_timesteps_up_to_the_start():
    from projects.glide.models.diffusion import GlideDDIMScheduler
    probe = load_tool('text_binding_probe')
    scheduler = GlideDDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(25)
    full = scheduler.timesteps.tolist()
    with probe.sampling_from(scheduler, 800):
        scheduler.set_timesteps(25)
        assert scheduler.timesteps.tolist() == [t for t in full if t <= 800] and scheduler.timesteps[0] == 800
    scheduler.set_timesteps(25)
    assert scheduler.timesteps.tolist() == full
    with probe.sampling_from(scheduler, -1), pytest.raises(ValueError, match='no sampling timestep at or below -1'):
        scheduler.set_timesteps(25)


def test_text_binding_probe_prints_a_table_for_a_model(ckpts, tmp_path):
    r = run([sys.executable, tool('text_binding_probe.py'), BASE_CFG, ckpts['base'], '--scenes', '4',
             '--swaps', '2', '--routed', '3', '--own-phrase', '2'], cwd=tmp_path, timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith('2016 captions')):]
    assert lines[1] == '| probe | accuracy % | chance % |'
    split = lines.index('')
    rows = [line.strip('| ').split(' | ') for line in lines[3:split]]
    assert [row[0] for row in rows] == [name for name, _, _ in load_tool('text_binding_probe').PROBES]
    accuracy = {row[0]: float(row[1]) for row in rows}
    assert all(0 <= a <= 100 for a in accuracy.values())
    # a random model's token states still say which word they hold
    assert accuracy['first colour token -> its colour (method check)'] > 90
    assert [float(row[2]) for row in rows] == [12.5] * 5 + [33.3] * 6
    # where the shapes' pixels look: per timestep, level (32x32 then 16x16) and shape
    assert lines[split + 1] == "attention (% of a pixel's) from the pixels of each shape, 4 noised true renders"
    assert lines[split + 2] == ('| timestep | level | pixels of | c1 | k1 | c2 | k2 | padding | caption '
                                '| own shape | other shape |')
    end = lines.index('', split + 1)
    rows = [line.strip('| ').split(' | ') for line in lines[split + 4:end]]
    assert [row[:3] for row in rows] == [[t, level, shape] for t in ('900', '600') for level in ('32x32', '16x16')
                                         for shape in ('shape 1', 'shape 2')]
    for row in rows:
        c1, k1, c2, k2, padding, caption, own, other = map(float, row[3:])
        assert 0 < c1 + k1 + c2 + k2 + padding <= caption + 0.3
        assert own > 0 and other > 0 and caption + own + other <= 100.3
    split = end
    assert lines[split + 1:split + 4] == [
        'kind drawn for 2 one-shape captions with one text feature from the caption with the kind changed',
        '| feature from the changed caption | caption kind | swapped kind | other or none |', '|---|---|---|---|']
    end = lines.index('', split + 1)
    rows = [line.strip('| ').split(' | ') for line in lines[split + 4:end]]
    assert [row[0] for row in rows] == ['xf_proj', 'xf_out'] and all(sum(map(int, row[1:])) == 2 for row in rows)
    assert lines[end + 1:end + 4] == [
        "kinds drawn for 3 captions with two kinds, with the kind words' attention as trained and routed by the "
        "colour words'", '| sampling | both right | swapped | one kind twice | other or none |',
        '|---|---|---|---|---|']
    split = lines.index('', end + 1)
    rows = [line.strip('| ').split(' | ') for line in lines[end + 4:split]]
    assert [row[0] for row in rows] == ['as trained', 'kind words routed by colour']
    assert all(sum(map(int, row[1:])) == 3 for row in rows)
    assert lines[split + 1:split + 4] == [
        "kinds drawn for 2 captions with two kinds from their kind-neutral layout at t = 800, each shape's box "
        "reading the caption as trained or only its own phrase",
        '| sampling | both right | swapped | one kind twice | other or none |', '|---|---|---|---|---|']
    rows = [line.strip('| ').split(' | ') for line in lines[split + 4:]]
    assert [row[0] for row in rows] == ['as trained', 'each box reads its own phrase']
    assert all(sum(map(int, row[1:])) == 2 for row in rows)
    r = run([sys.executable, tool('text_binding_probe.py'), BASE_CFG, 'none.pth'], cwd=tmp_path)
    assert r.returncode == 1 and 'error: file not found: none.pth' in r.stderr


def test_shipped_model_draws_the_kind_its_token_states_say():
    """The kind-source table on the shipped weights: with the per-token states
    of the caption with the kind changed the model draws the changed kind,
    with only the pooled feature changed it draws the caption's kind."""
    from mmagic.apis import init_model
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    model = init_model(BASE_CFG, osp.join(REPO, 'projects', 'glide', 'weights', 'glide_tiny_shapes-64x64.pth'),
                       device='cpu')
    counts = load_tool('text_binding_probe').kind_source(model, count=4)
    assert counts['xf_out']['swapped kind'] >= 3 and counts['xf_proj']['caption kind'] >= 3
    assert all(sum(c.values()) == 4 for c in counts.values())
    assert 'encode_text' not in vars(model.unet)  # the swap is undone
