"""Bad input to the command-line tools: one ``error:`` line naming the file or
argument, a non-zero exit, no traceback, and no file changed or half written;
outputs never replace inputs and are written atomically; test.py clears only
its own images; --resume skips a damaged checkpoint."""
import hashlib
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tool_helpers import BASE_CFG, FAST, PROMPTS, fails, load_tool, run, saved_pngs, tool


def snapshot(folder):
    """{relative path: (sha1, mtime_ns)} of every file under ``folder``."""
    state = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                state[os.path.relpath(path, folder)] = (hashlib.sha1(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return state


@pytest.fixture
def junk(tmp_path):
    """Files that are not checkpoints, in ``tmp_path``."""
    (tmp_path / 'notes.txt').write_text('weights: see the README\n')
    Image.new('RGB', (8, 8)).save(tmp_path / 'image.png')
    (tmp_path / 'random.bin').write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    return dict(txt=tmp_path / 'notes.txt', png=tmp_path / 'image.png', bin=tmp_path / 'random.bin')


REASONS = dict(txt=r'\(it is a text file\)', png=r'\(it is a PNG image\)',
               bin=r'\(its first bytes .* start neither a zip archive nor a pickle\)')


def test_every_tool_names_a_file_that_is_not_a_checkpoint(junk, tmp_path):
    """As a user runs them: no traceback, no advice to unpickle it, nothing written."""
    (tmp_path / 'p.txt').write_text('a red circle\n')
    txt = str(junk['txt'])
    commands = [
        ['model_converters/glide_openai_to_mmagic.py', '--base', txt, '--out', 'out.pth'],
        ['model_converters/glide_publish.py', txt, 'out.pth'],
        ['glide_demo.py', '--checkpoint', txt, '--out', 'o.png', '--device', 'cpu'],
        ['test.py', BASE_CFG, txt, '--work-dir', 'wd', '--prompts', 'p.txt'],
        ['train.py', BASE_CFG, '--work-dir', 'wd', '--resume', txt],
    ]
    before = snapshot(tmp_path)
    for name, *args in commands:
        r = run([sys.executable, tool(name), *args], cwd=tmp_path)
        assert r.returncode != 0, name
        assert 'Traceback' not in r.stderr and 'weights_only' not in r.stderr, (name, r.stderr)
        assert r.stderr.strip().splitlines()[-1].endswith(
            f'{txt} is not a PyTorch checkpoint (it is a text file)'), (name, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith('error: '), (name, r.stderr)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize('kind', ['png', 'bin'])
def test_converter_and_publish_name_images_and_random_bytes(junk, tmp_path, capsys, kind):
    path = str(junk[kind])
    fails(load_tool('model_converters/glide_publish'), [path, str(tmp_path / 'o.pth')], capsys,
          f'^error: {path} is not a PyTorch checkpoint {REASONS[kind]}$')
    fails(load_tool('model_converters/glide_openai_to_mmagic'), ['--base', path, '--out', str(tmp_path / 'o.pth')],
          capsys, f'^error: {path} is not a PyTorch checkpoint {REASONS[kind]}$')
    assert not (tmp_path / 'o.pth').exists()


@pytest.fixture
def training_ckpt(tmp_path):
    """A training checkpoint of a base run: EMA weights, raw weights, optimizer state."""
    path = tmp_path / 'iter_10.pth'
    weights = {'unet.w': torch.ones(4), 'unet.b': torch.zeros(2)}
    torch.save(dict(state_dict=weights, ema_state_dict=dict(weights), optimizer={'lr': 0.1},
                    meta=dict(iter=10)), path)
    return path


def test_publish_refuses_to_overwrite_its_input(training_ckpt, tmp_path, capsys):
    publish = load_tool('model_converters/glide_publish')
    (tmp_path / 'link.pth').symlink_to(training_ckpt)
    before = snapshot(tmp_path)
    for out in (training_ckpt, tmp_path / 'link.pth'):
        fails(publish, [str(training_ckpt), str(out)], capsys,
              f'output file {out} is also an input .*: writing it would destroy the input')
    fails(publish, [str(training_ckpt), str(tmp_path / 'pub.pth'), '--upsampler-from', str(tmp_path / 'pub.pth')],
          capsys, '--upsampler-from checkpoint file not found')
    fails(publish, [str(training_ckpt), str(tmp_path / 'missing' / 'pub.pth')], capsys,
          f'cannot write output file .*: directory {tmp_path / "missing"} does not exist')
    assert snapshot(tmp_path) == before


def test_publish_refuses_files_without_glide_weights(training_ckpt, tmp_path, capsys):
    publish = load_tool('model_converters/glide_publish')
    torch.save({'backbone.conv.weight': torch.ones(2), 'head.fc.weight': torch.ones(2)}, tmp_path / 'other.pth')
    fails(publish, [str(tmp_path / 'other.pth'), str(tmp_path / 'pub.pth')], capsys,
          f'^error: no GLIDE weights found in {tmp_path / "other.pth"}: no unet.\\* or unet_up.\\* keys$')
    # a base-only checkpoint as the upsampler source: no upsampler weights, no upsampler_iter
    fails(publish, [str(training_ckpt), str(tmp_path / 'pub.pth'), '--upsampler-from', str(training_ckpt)], capsys,
          f'--upsampler-from {training_ckpt} holds no upsampler weights \\(unet_up.\\*\\)')
    assert not (tmp_path / 'pub.pth').exists()


def test_publish_writes_atomically(training_ckpt, tmp_path, monkeypatch, capsys):
    from projects.glide import fileio
    publish = load_tool('model_converters/glide_publish')
    out = tmp_path / 'pub.pth'
    assert publish.main([str(training_ckpt), str(out)]) == 0
    assert set(torch.load(out, weights_only=True)) == {'state_dict', 'meta'}
    before = snapshot(tmp_path)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, 'replace', killed)  # interrupted before the rename
    with pytest.raises(KeyboardInterrupt):
        publish.main([str(training_ckpt), str(out), '--fp16'])
    assert snapshot(tmp_path) == before  # the old output is intact, no temporary file is left


def test_converter_names_non_glide_and_converted_files(training_ckpt, tmp_path, capsys):
    convert = load_tool('model_converters/glide_openai_to_mmagic')
    torch.save({'backbone.conv.weight': torch.ones(2)}, tmp_path / 'other.pth')
    out = str(tmp_path / 'o.pth')
    fails(convert, ['--base', str(tmp_path / 'other.pth'), '--out', out], capsys,
          f'--base {tmp_path / "other.pth"} is not an openai GLIDE checkpoint: input_blocks.0.0.weight is missing')
    fails(convert, ['--base', str(training_ckpt), '--out', out], capsys,
          f'--base {training_ckpt} is not an openai GLIDE checkpoint: it holds unet.\\* keys: it is already '
          'converted')
    fails(convert, ['--base', str(training_ckpt), '--out', str(training_ckpt)], capsys, 'is also an input')
    fails(convert, ['--base', str(training_ckpt), '--out', str(tmp_path / 'no' / 'o.pth')], capsys,
          'directory .* does not exist')
    assert sorted(os.listdir(tmp_path)) == ['iter_10.pth', 'other.pth']


@pytest.mark.parametrize('args,message', [
    (['--steps', '-3'], 'argument --steps: steps must be >= 1, got -3'),
    (['--steps', 'abc'], "argument --steps: Invalid timestep respacing spec 'abc'"),
    (['--steps-up', '0'], 'argument --steps-up: steps must be >= 1, got 0'),
    (['--steps-up', 'fast10'], "argument --steps-up: Invalid timestep respacing spec 'fast10'"),
    (['--guidance-scale', 'nan'], 'argument --guidance-scale: must be a finite number, got nan'),
    (['--guidance-scale', 'abc'], "argument --guidance-scale: not a number: 'abc'"),
])
def test_demo_checks_its_arguments_before_any_work(args, message, capsys):
    demo = load_tool('glide_demo')
    with pytest.raises(SystemExit) as stop:
        demo.parse_args(args)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ': error: ' + message in last, last


def test_demo_refuses_an_output_that_is_an_input(ckpts, tmp_path, capsys):
    demo = load_tool('glide_demo')
    Image.new('RGB', (64, 64)).save(tmp_path / 'in.png')
    Image.new('L', (64, 64), 255).save(tmp_path / 'mask.png')
    before = snapshot(tmp_path)
    fails(demo, ['--config', BASE_CFG, '--checkpoint', ckpts['base'], '--image', str(tmp_path / 'in.png'),
                 '--mask', str(tmp_path / 'mask.png'), '--out', str(tmp_path / 'in.png')], capsys,
          'is also an input')
    assert snapshot(tmp_path) == before


def test_demo_replaces_an_existing_output(ckpts, tmp_path, capsys):
    """The documented convention (like diffusers' and mmagic's demos): --out is
    replaced, atomically, so the README's command works when run twice."""
    (tmp_path / 'o.png').write_bytes(b'an older result')
    r = run([sys.executable, tool('glide_demo.py'), 'a red circle', '--config', BASE_CFG, '--checkpoint',
             ckpts['base'], '--steps', '1', '--device', 'cpu', '--out', 'o.png'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'replaced the previous file' in r.stdout
    with Image.open(tmp_path / 'o.png') as im:
        assert im.text['prompts'] == 'a red circle'
    assert sorted(os.listdir(tmp_path)) == ['o.png']
    with pytest.raises(SystemExit):
        load_tool('glide_demo').parse_args(['--help'])
    assert 'an existing file is replaced, atomically' in ' '.join(capsys.readouterr().out.split())


def test_test_py_clears_only_the_images_of_a_previous_run(ckpts, tmp_path):
    out = tmp_path / 'imgs'
    (out / 'low_res').mkdir(parents=True)
    (out / 'sub').mkdir()
    for name in ('00000_old-prompt.png', '00007_old-prompt.png', 'grid.png', 'low_res/00003_x.png'):
        (out / name).write_bytes(b'old')
    for name in ('notes.txt', 'photo.png', 'sub/00001_y.png', '7_z.png'):
        (out / name).write_bytes(b'mine')
    (tmp_path / 'p.txt').write_text('\n'.join(PROMPTS[:2]) + '\n')
    r = run([sys.executable, tool('test.py'), BASE_CFG, ckpts['base'], '--work-dir', 'wd', '--prompts', 'p.txt',
             '--out-dir', 'imgs', '--cfg-options', *FAST, 'model.test_cfg.num_inference_steps=1'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert saved_pngs(out) == ['00000_a-red-circle-on-a-blue-background.png',
                               '00001_a-green-triangle-at-the-top-white-background.png']
    assert os.listdir(out / 'low_res') == []
    for name in ('notes.txt', 'photo.png', 'sub/00001_y.png', '7_z.png'):
        assert (out / name).read_bytes() == b'mine', name
    assert (out / 'grid.png').read_bytes() != b'old'


def test_test_py_names_a_file_that_is_not_a_checkpoint(junk, tmp_path, capsys):
    (tmp_path / 'p.txt').write_text('a red circle\n')
    before = snapshot(tmp_path)
    for kind in ('png', 'bin'):
        path = str(junk[kind])
        fails(load_tool('test'), [BASE_CFG, path, '--work-dir', str(tmp_path / 'wd'), '--prompts',
                                  str(tmp_path / 'p.txt')], capsys,
              f'^error: {path} is not a PyTorch checkpoint {REASONS[kind]}$')
    assert snapshot(tmp_path) == before


def test_resume_skips_a_damaged_last_checkpoint(tmp_path, capsys):
    train = load_tool('train')
    wd = tmp_path / 'wd'
    wd.mkdir()
    torch.save({'meta': {'iter': 2}}, wd / 'iter_2.pth')
    torch.save({'meta': {'iter': 4}}, wd / 'iter_4.pth')
    data = (wd / 'iter_4.pth').read_bytes()
    (wd / 'iter_4.pth').write_bytes(data[:len(data) // 2])  # truncated while written
    (wd / 'iter_6.pth').write_bytes(b'')  # killed before writing anything
    (wd / 'last_checkpoint').write_text(str(wd / 'iter_6.pth'))
    assert train.latest_intact_checkpoint(str(wd)) == str(wd / 'iter_2.pth')
    warned = capsys.readouterr().err.strip().splitlines()
    assert warned == [f'warning: --resume skips {wd / "iter_6.pth"}: checkpoint file is empty: {wd / "iter_6.pth"}',
                      f'warning: --resume skips {wd / "iter_4.pth"}: {wd / "iter_4.pth"} is not a PyTorch '
                      'checkpoint (it is truncated or not a PyTorch file: File is not a zip file)']
    # nothing intact: the run stops before any work, naming the damaged files
    (wd / 'iter_2.pth').write_bytes(b'')
    before = snapshot(tmp_path)
    assert train.main([BASE_CFG, '--work-dir', str(wd), '--resume']) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f'error: no intact checkpoint to resume from in {wd}: ') and 'iter_2.pth' in last
    assert snapshot(tmp_path) == before
    assert train.latest_intact_checkpoint(str(tmp_path / 'fresh')) is None  # a new run: nothing to resume


def test_atomic_checkpoint_hook_writes_whole_files_or_none(tmp_path, monkeypatch):
    from mmagic.registry import HOOKS
    from mmengine.runner.checkpoint import save_checkpoint

    from projects.glide import fileio
    from projects.glide.engine.checkpoint_hook import ATOMIC_BACKEND
    hook = HOOKS.build(dict(type='AtomicCheckpointHook', interval=2, by_epoch=False))
    assert hook.backend_args == dict(backend=ATOMIC_BACKEND)
    assert HOOKS.build(dict(type='AtomicCheckpointHook', out_dir='s3://bucket/run')).backend_args is None
    path = str(tmp_path / 'iter_2.pth')
    save_checkpoint({'state_dict': {'w': torch.ones(2)}}, path, backend_args=hook.backend_args)
    before = snapshot(tmp_path)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, 'replace', killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'state_dict': {'w': torch.zeros(2)}}, path, backend_args=hook.backend_args)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'state_dict': {'w': torch.zeros(2)}}, str(tmp_path / 'iter_4.pth'),
                        backend_args=hook.backend_args)
    assert snapshot(tmp_path) == before  # iter_2 intact, no iter_4, no temporary file
