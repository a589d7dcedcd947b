"""tools/test.py and tools/dist_test.sh, driven as a user would (subprocesses), on the tiny
configs with random-weight checkpoints and a few sampling steps; and the engine pieces
they use (image saver hook, grids, file names) in-process.
"""
import json
import os
import os.path as osp
import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from tool_helpers import (
    BASE_CFG,
    CASCADE_CFG,
    CONFIGS,
    FAST,
    PROMPTS,
    fails,
    free_port,
    load_tool,
    png_meta,
    run,
    saved_pngs,
    tool,
)


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


def test_test_py_bad_input(test_tool, ckpts, tmp_path, capsys):
    wd = str(tmp_path / 'wd')
    common = ['--work-dir', wd]
    fails(test_tool, [BASE_CFG, str(tmp_path / 'x.pth')] + common, capsys,
           'checkpoint file not found')
    (tmp_path / 'empty.pth').write_bytes(b'')
    fails(test_tool, [BASE_CFG, str(tmp_path / 'empty.pth')] + common, capsys,
           'checkpoint file is empty')
    (tmp_path / 'empty.txt').write_text('\n  \n')
    fails(test_tool, [BASE_CFG, ckpts['base'], '--prompts', str(tmp_path / 'empty.txt')]
           + common, capsys, 'prompt file is empty')
    fails(test_tool, [BASE_CFG, ckpts['base'], '--prompts', str(tmp_path / 'none.txt')]
           + common, capsys, 'prompt file not found')
    (tmp_path / 'afile').write_text('x')
    fails(test_tool, [BASE_CFG, ckpts['base'], '--out-dir', str(tmp_path / 'afile' / 'imgs')]
           + common, capsys, 'cannot create out dir .* is not a directory')
    fails(test_tool, [BASE_CFG, ckpts['base'], '--out-dir', str(tmp_path / 'afile')]
           + common, capsys, 'exists and is not a directory')
    fails(test_tool, [BASE_CFG, ckpts['base'], '--work-dir', '/proc/glide_wd'],
           capsys, 'not writable')
    fails(test_tool, [CONFIGS + '/glide_ddim-classifier-free_laion-64x64.py',
                       ckpts['base']] + common, capsys, 'no test_dataloader.*--prompts')
    if not torch.cuda.is_available():
        fails(test_tool, [BASE_CFG, ckpts['base'], '--cfg-options', 'device=cuda'] + common,
               capsys, 'device=cuda asks for CUDA')
        fails(test_tool, [BASE_CFG, ckpts['base'], '--launcher', 'pytorch'] + common,
               capsys, 'nccl.*env_cfg.dist_cfg.backend=gloo')
    assert sorted(os.listdir(tmp_path)) == ['afile', 'empty.pth', 'empty.txt']


def test_dist_test_sh_usage(tmp_path):
    r = run(['bash', tool('dist_test.sh'), 'a.py'], cwd=tmp_path)
    assert r.returncode == 2 and 'usage' in r.stderr
    r = run(['bash', tool('dist_test.sh'), 'a.py', 'b.pth', 'two'], cwd=tmp_path)
    assert r.returncode == 2 and 'NPROC must be a positive integer' in r.stderr


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


def test_test_py_runs_past_the_timers_tenth_iteration(ckpts, tmp_path):
    """11 one-image batches: the iteration timer estimates the time left every 10th iteration
    (mmagic's timer needed a loop attribute mmengine's TestLoop lacks and stopped the run there)."""
    r = run([sys.executable, tool('test.py'), BASE_CFG, ckpts['base'], '--work-dir', 'wd',
             '--cfg-options', 'model.test_cfg.num_inference_steps=1', 'test_dataloader.batch_size=1',
             'test_dataloader.num_workers=0',
             'test_dataloader.dataset.size=11'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(saved_pngs(tmp_path / 'wd' / 'images')) == 11
    metrics = json.load(open(tmp_path / 'wd' / 'metrics.json'))
    assert metrics['shapes/held_out/count'] + metrics['shapes/seen/count'] == 11


def test_test_py_times_configs_without_a_runtime_with_mmengines_timer(converted, tmp_path):
    """A converted (inference-only) config names no hooks: 10 batches of 4 captions run through,
    past the timer's estimate at the 10th."""
    (tmp_path / 'prompts.txt').write_text('\n'.join(f'a corgi number {i}' for i in range(40)) + '\n')
    r = run([sys.executable, tool('test.py'), *converted['text2im'], '--work-dir', 'wd', '--prompts', 'prompts.txt',
             '--cfg-options', 'model.test_cfg.num_inference_steps=1', 'model.test_cfg.num_inference_steps_up=1'],
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(saved_pngs(tmp_path / 'wd' / 'images')) == 40
