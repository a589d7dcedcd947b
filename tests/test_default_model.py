"""The bundled default models (the 64x64 base and the 64->256 cascade): they
ship, load strictly and the cascade drives the demo with no arguments beyond
a prompt (the README's main command)."""
import pytest
import torch
from conftest import ROOT, run_tool
from PIL import Image

import projects.glide.research  # noqa: F401  (registers the research stages' components)

WEIGHTS = ROOT / 'projects' / 'glide' / 'weights'
CONFIGS = ROOT / 'projects' / 'glide' / 'configs'
RESEARCH_CONFIGS = ROOT / 'projects' / 'glide' / 'research' / 'configs'
GROUNDING = dict(type='TokenGroundingLoss', weight=1., sides=(16, ))
SHIPPED = {'glide_tiny_shapes-64-256.pth': 'glide_tiny_shapes-64-256.py',
           'glide_tiny_shapes-64x64.pth': 'glide_tiny_shapes-64x64.py',
           'glide_clip_tiny_shapes-64x64.pth': 'glide_clip_tiny_shapes-64x64.py'}


def test_weights_ship_small_and_load_strictly():
    from mmagic.apis import init_model
    from mmengine.registry import init_default_scope
    files = sorted(WEIGHTS.glob('*.pth'))
    assert [f.name for f in files] == sorted(SHIPPED)
    assert sum(f.stat().st_size for f in files) <= 40 * 2**20  # all bundled weights within 40 MB
    init_default_scope('mmagic')
    saved = {}
    for f in files:
        saved[f.name] = torch.load(f, weights_only=True)
        assert saved[f.name]['meta']['iter'] > 0
        model = init_model(str(CONFIGS / SHIPPED[f.name]), str(f), device='cpu')
        for key in ('unet.out.conv.weight', 'unet_up.out.conv.weight'):
            if key in saved[f.name]['state_dict']:
                assert torch.equal(model.state_dict()[key],
                                   saved[f.name]['state_dict'][key].float())
    cascade, base = saved['glide_tiny_shapes-64-256.pth'], saved['glide_tiny_shapes-64x64.pth']
    assert cascade['meta']['upsampler_iter'] > 0
    # the cascade's first stage is the shipped 64x64 model
    assert cascade['meta']['iter'] == base['meta']['iter']
    assert all(torch.equal(v, cascade['state_dict'][k]) for k, v in base['state_dict'].items())
    # the base carries learnt (no longer zero) position embeddings in its 16x16 and 32x32 attention blocks
    positions = {k: v for k, v in base['state_dict'].items() if k.endswith('.position_embedding')}
    sides = {k: tuple(v.shape[1:]) for k, v in positions.items()}
    assert sides == {
        **{f'unet.{b}.1.position_embedding': (32, 32)
           for b in ('in_blocks.4', 'in_blocks.5', 'out_blocks.3', 'out_blocks.4', 'out_blocks.5')},
        **{f'unet.{b}.position_embedding': (16, 16)
           for b in ('in_blocks.7.1', 'in_blocks.8.1', 'mid_blocks.1', 'out_blocks.0.1', 'out_blocks.1.1',
                     'out_blocks.2.1')}}
    assert all(v.float().abs().mean() > 1e-3 for v in positions.values())


def test_bundled_models_slice_their_cpu_batches():
    """The bundled base model takes 16 rows a call on a CPU (its tools/test.py batch of 64 images is 128
    guided rows), its upsampler one."""
    from projects.glide.apis import init_glide
    model = init_glide(str(CONFIGS / 'glide_tiny_shapes-64-256.py'), None, device='cpu')
    assert model.stage_rows_per_call(model.unet) == 16
    assert model.stage_rows_per_call(model.unet_up) == 1


def test_demo_defaults_write_a_captioned_png(tmp_path):
    out = tmp_path / 'demo.png'
    proc = run_tool('tools/glide_demo.py', 'a red circle above a blue square on a yellow background',
                    '--steps', '3', '--steps-up', '3', '--out', out)
    assert 'GLIDE base' in proc.stderr and 'GLIDE upsampler' in proc.stderr  # progress bars
    with Image.open(out) as im:
        # one 256x256 image (plus a frame) above its caption
        assert im.mode == 'RGB' and 256 <= im.size[0] < 300 and im.size[1] > 256
        assert im.text['prompts'] == 'a red circle above a blue square on a yellow background'


def _learning_rates(cfg, iterations):
    """The learning rate of each of the first ``iterations`` + 1 iterations
    under the config's optimiser and parameter schedulers."""
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    wrapper = OptimWrapper(optimizer)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler]
    lrs = []
    for _ in range(iterations + 1):
        lrs.append(optimizer.param_groups[0]['lr'])
        for s in schedulers:
            s.step()
    return lrs


def _assert_warm_hold_decay(lrs, hold_until, end):
    """``lrs`` (one per iteration, ``end`` + 1 of them) rise from 1e-5 to 2e-4
    over the first 100 iterations, hold 2e-4 to ``hold_until``, then fall
    linearly to 1e-5 by ``end``."""
    assert len(lrs) == end + 1
    assert lrs[0] == pytest.approx(1e-5) and lrs[100] == pytest.approx(2e-4) == max(lrs)
    assert all(a < b for a, b in zip(lrs[:99], lrs[1:100]))
    assert lrs[100:hold_until + 1] == pytest.approx([2e-4] * (hold_until - 99))
    assert lrs[(hold_until + end) // 2] == pytest.approx(1.05e-4, rel=1e-2) and lrs[end] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs[hold_until:end - 1], lrs[hold_until + 1:end]))


def test_lr_decay_stage_is_the_shipped_model_with_a_held_then_decaying_learning_rate():
    from mmengine.config import Config
    decay = Config.fromfile(str(CONFIGS / 'glide_tiny_shapes-64x64_lr-decay.py'))
    base = Config.fromfile(str(CONFIGS / 'glide_tiny_shapes-64x64.py'))
    assert decay.model == base.model and decay.train_dataloader == base.train_dataloader
    assert decay.model.unet.attention_res == (16, 32)
    assert decay.train_cfg.max_iters == 3000
    _assert_warm_hold_decay(_learning_rates(decay, 3000), hold_until=1900, end=3000)


def test_kinds_stage_weighs_the_kind_mask_on_more_two_shape_scenes():
    from mmengine.config import Config
    kinds = Config.fromfile(str(RESEARCH_CONFIGS / 'glide_tiny_shapes-64x64_kinds.py'))
    base = Config.fromfile(str(CONFIGS / 'glide_tiny_shapes-64x64.py'))
    assert kinds.model.unet == base.model.unet
    assert kinds.model.train_cfg == dict(base.model.train_cfg, pixel_weights=[
        dict(type='KindPixelWeight', weight=5.), *base.model.train_cfg.pixel_weights])
    assert kinds.train_dataloader.dataset == dict(base.train_dataloader.dataset, pipeline=[dict(type='KindMask')],
                                                  two_shape_prob=0.6)
    assert kinds.test_dataloader == base.test_dataloader and kinds.train_cfg.max_iters == 2400
    _assert_warm_hold_decay(_learning_rates(kinds, 2400), hold_until=1400, end=2400)


def _assert_text_blocks_learn_three_times_faster(cfg, text_blocks):
    """Build ``cfg``'s model and optimiser through mmengine and check each
    parameter's learning rate: 3x in the text blocks, the base config's 10x
    on the attention position embeddings, 2e-4 elsewhere."""
    from mmagic.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    model = MODELS.build(cfg.model)
    assert len(model.unet.transformer.resblocks) == text_blocks
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    lr = {names[id(p)]: g['lr'] for g in groups for p in g['params']}
    assert len(lr) == len(names)
    text = [n for n in lr if n.startswith('unet.transformer.resblocks.')]
    assert len(text) == text_blocks * 12
    assert all(lr[n] == pytest.approx(6e-4) for n in text)
    assert all(lr[n] == pytest.approx(2e-3) for n in lr if n.endswith('.position_embedding'))
    rest = [n for n in lr if n not in text and not n.endswith('.position_embedding')]
    assert lr['unet.transformer_proj.weight'] == pytest.approx(2e-4)
    assert all(lr[n] == pytest.approx(2e-4) for n in rest)
    return model


@pytest.mark.parametrize('name, unet_change, loss_change, data_change, text_blocks', [
    ('glide_tiny_shapes-64x64_deep-text.py', dict(xf_layers=4), {}, {}, 4),
    ('glide_tiny_shapes-64x64_local-text.py', dict(xf_local_window=1), {}, {}, 2),
    ('glide_tiny_shapes-64x64_grounding.py', {}, dict(aux_losses=[GROUNDING]),
     dict(pipeline=[dict(type='ShapeGroundingTargets')]), 2),
    ('glide_tiny_shapes-64x64_grounding-box.py', {}, dict(aux_losses=[GROUNDING]),
     dict(pipeline=[dict(type='ShapeGroundingTargets', kind_region='box')]), 2),
    ('glide_tiny_shapes-64x64_grounding-late.py', {},
     dict(aux_losses=[dict(GROUNDING, max_timestep=700)]),
     dict(pipeline=[dict(type='ShapeGroundingTargets', kind_region='box')]), 2)])
def test_text_stages_change_only_the_text_side_and_teach_the_encoder_three_times_faster(
        name, unet_change, loss_change, data_change, text_blocks):
    """The stages that work on the binding of words to shapes: the shipped
    model with only the named changes to the UNet, the training loss and the
    data, and the deep-text stage's schedule."""
    from mmengine.config import Config
    stage = Config.fromfile(str(RESEARCH_CONFIGS / name))
    base = Config.fromfile(str(CONFIGS / 'glide_tiny_shapes-64x64.py'))
    assert stage.model == dict(base.model, unet=dict(base.model.unet, **unet_change),
                               train_cfg=dict(base.model.train_cfg, **loss_change))
    assert stage.train_dataloader.dataset == dict(base.train_dataloader.dataset, two_shape_prob=0.6,
                                                  **data_change)
    assert stage.test_dataloader == base.test_dataloader and stage.train_cfg.max_iters == 2000
    model = _assert_text_blocks_learn_three_times_faster(stage, text_blocks)
    assert model.unet.transformer.local_window == unet_change.get('xf_local_window')
    # a stage starts from the shipped weights: every shipped tensor fits, and
    # the only new ones are the added text blocks'
    state = model.state_dict()
    shipped = torch.load(WEIGHTS / 'glide_tiny_shapes-64x64.pth', weights_only=True)['state_dict']
    assert all(state[k].shape == v.shape for k, v in shipped.items())
    assert sorted(set(state) - set(shipped)) == sorted(
        k for k in state if k.startswith(tuple(f'unet.transformer.resblocks.{i}.' for i in range(2, text_blocks))))
    _assert_warm_hold_decay(_learning_rates(stage, 2000), hold_until=1100, end=2000)


def test_off_phrase_stage_adds_only_the_off_phrase_loss_and_holds_the_text_transformer():
    """The off-phrase stage: the grounding-box stage's data and schedule with
    the word loss off and the off-phrase loss on, and every parameter of the
    text side at learning rate 0 (the UNet's own at the usual rates)."""
    from mmagic.registry import MODELS
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    stage = Config.fromfile(str(RESEARCH_CONFIGS / 'glide_tiny_shapes-64x64_off-phrase.py'))
    base = Config.fromfile(str(CONFIGS / 'glide_tiny_shapes-64x64.py'))
    assert stage.model == dict(base.model, train_cfg=dict(base.model.train_cfg, aux_losses=[
        dict(type='OffPhraseLoss', weight=1., sides=(16, ))]))
    assert stage.train_dataloader.dataset == dict(base.train_dataloader.dataset, two_shape_prob=0.6,
                                                  pipeline=[dict(type='ShapeGroundingTargets', kind_region='box')])
    assert stage.test_dataloader == base.test_dataloader and stage.train_cfg.max_iters == 2000
    model = MODELS.build(stage.model)
    groups = build_optim_wrapper(model, stage.optim_wrapper).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    lr = {names[id(p)]: g['lr'] for g in groups for p in g['params']}
    assert len(lr) == len(names)
    text_side = {n for n in lr if n.startswith(('unet.transformer.', 'unet.token_embedding',
                                                'unet.positional_embedding',
                                                'unet.padding_embedding', 'unet.final_ln', 'unet.transformer_proj'))}
    assert len(text_side) == 2 * 12 + 7 and all(lr[n] == 0 for n in text_side)
    assert all(lr[n] == pytest.approx(2e-3) for n in lr if n.endswith('.position_embedding'))
    assert all(lr[n] == pytest.approx(2e-4) for n in lr if n not in text_side and not n.endswith('.position_embedding'))
    assert any('encoder_kv' in n for n in lr if n not in text_side)  # the UNet reads the text at the usual rate
    _assert_warm_hold_decay(_learning_rates(stage, 2000), hold_until=1100, end=2000)
