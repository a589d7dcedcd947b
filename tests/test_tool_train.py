"""tools/train.py and tools/dist_train.sh on the tiny shapes config for a few iterations
(resume, --init-from/--init-rename/--init-zero, two CPU processes), and the bf16 autocast
optimiser wrapper behind --amp.
"""
import sys

import pytest
import torch
from tool_helpers import BASE_CFG, free_port, load_tool, run, tool


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
