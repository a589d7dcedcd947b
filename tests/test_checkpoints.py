"""Checkpoint layout, conversion and loading: what fits loads strictly,
everything else fails with a message naming the problem."""
import json

import pytest
import torch
from conftest import MANIFESTS, REFERENCE, ROOT, run_tool
from mmagic.apis import init_model
from mmagic.registry import MODELS
from mmengine import Config
from mmengine.registry import init_default_scope

from projects.glide.checkpoint import CheckpointMismatchError
from projects.glide.convert import convert_openai_checkpoint, infer_unet_config, openai_key_to_mmagic

pytestmark = pytest.mark.shared  # reads ../shared/fixtures

init_default_scope('mmagic')
CONFIGS = ROOT / 'projects' / 'glide' / 'configs'


def manifest_shapes(*names):
    shapes = {}
    for name in names:
        data = json.loads((MANIFESTS / f'{name}.json').read_text())
        for key, shape in data['state_dict'].items():
            shapes[data['mmagic_glide_key'][key]] = tuple(shape)
    return shapes


def build_meta(config):
    cfg = Config.fromfile(str(config))
    with torch.device('meta'):
        return MODELS.build(cfg.model)


@pytest.mark.parametrize('config,manifests', [
    ('glide_ddim-classifier-free_laion-64x64.py', ['openai-base']),
    ('glide_ddim-classifier-free_laion-64-256.py', ['openai-base', 'openai-upsample']),
])
def test_full_size_configs_match_released_layout(config, manifests):
    model = build_meta(CONFIGS / config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = manifest_shapes(*manifests)
    assert set(ours) == set(expected)
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert sum(v.numel() for v in model.unet.parameters()) == 385_030_726


@pytest.mark.parametrize('config,manifests', [
    ('glide_ddim-classifier-free_laion-inpaint-64x64.py', ['openai-base-inpaint']),
    ('glide_ddim-classifier-free_laion-inpaint-64-256.py',
     ['openai-base-inpaint', 'openai-upsample-inpaint']),
])
def test_inpaint_configs_match_released_layout(config, manifests):
    """openai's inpainting files, renamed like the text2im ones."""
    model = build_meta(CONFIGS / config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {}
    for name, prefix in zip(manifests, ('unet.', 'unet_up.')):
        data = json.loads((MANIFESTS / f'{name}.json').read_text())
        expected.update({prefix + openai_key_to_mmagic(k): tuple(v)
                         for k, v in data['state_dict'].items()})
    assert ours == expected


@pytest.mark.parametrize('name,unet_type', [
    ('openai-base-inpaint', 'InpaintText2ImUNet'),
    ('openai-upsample-inpaint', 'SuperResInpaintText2ImUNet'),
])
def test_converted_inpaint_layouts_match_their_manifests(name, unet_type):
    """The renaming rules plus the inferred architecture rebuild the released
    inpainting models key for key and shape for shape."""
    data = json.loads((MANIFESTS / f'{name}.json').read_text())
    fake = {k: torch.empty(shape, device='meta') for k, shape in data['state_dict'].items()}
    cfg = infer_unet_config(fake, data['options'])
    assert cfg['type'] == unet_type
    with torch.device('meta'):
        unet = MODELS.build(cfg)
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    theirs = {openai_key_to_mmagic(k): tuple(v) for k, v in data['state_dict'].items()}
    assert ours == theirs


def test_manifest_key_table_equals_renaming_rules():
    for name, prefix in (('openai-base', 'unet.'), ('openai-upsample', 'unet_up.')):
        data = json.loads((MANIFESTS / f'{name}.json').read_text())
        for key, mm_key in data['mmagic_glide_key'].items():
            assert prefix + openai_key_to_mmagic(key) == mm_key


def test_infer_config_of_full_size_models():
    for name, expect in (('openai-base', dict(type='Text2ImUNet', resblocks_per_downsample=3,
                                               channel_mult=(1, 2, 3, 4))),
                         ('openai-upsample', dict(type='SuperResText2ImUNet',
                                                  resblocks_per_downsample=2,
                                                  channel_mult=(1, 1, 2, 2, 4, 4)))):
        data = json.loads((MANIFESTS / f'{name}.json').read_text())
        fake = {k: torch.empty(shape, device='meta') for k, shape in data['state_dict'].items()}
        cfg = infer_unet_config(fake)  # no options: shapes alone
        for key, value in dict(expect, base_channels=192, attention_res=(32, 16, 8), xf_width=512,
                               xf_layers=16, xf_heads=8, text_ctx=128).items():
            assert cfg[key] == value, key


def test_converter_function_matches_tool(converted):
    base = torch.load(REFERENCE / 'base.pt', weights_only=True)
    state_dict, model_cfg = convert_openai_checkpoint(base)
    assert model_cfg['unet']['type'] == 'Text2ImUNet' and 'unet_up' not in model_cfg
    saved = torch.load(converted['text2im'][1], weights_only=True)['state_dict']
    for key, value in state_dict.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, saved[key])


def test_converter_rejects_swapped_stages(tmp_path):
    proc = run_tool('tools/model_converters/glide_openai_to_mmagic.py', '--base',
                    REFERENCE / 'upsample.pt', '--out', tmp_path / 'x.pth', check=False)
    assert proc.returncode == 1
    assert 'pass base models with --base' in proc.stderr
    assert not (tmp_path / 'x.pth').exists()


def test_converter_missing_input(tmp_path):
    proc = run_tool('tools/model_converters/glide_openai_to_mmagic.py', '--base',
                    tmp_path / 'nope.pt', '--out', tmp_path / 'x.pth', check=False)
    assert proc.returncode == 1 and 'checkpoint file not found' in proc.stderr


def _save(path, state_dict):
    torch.save(dict(state_dict=state_dict), path)
    return str(path)


@pytest.fixture(scope='module')
def text2im_state(converted):
    return torch.load(converted['text2im'][1], weights_only=True)['state_dict']


def test_missing_and_unexpected_keys_fail_loudly(converted, text2im_state, tmp_path):
    cfg = converted['text2im'][0]
    sd = dict(text2im_state)
    sd.pop('unet.out.conv.weight')
    sd['unet.extra.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        init_model(cfg, _save(tmp_path / 'bad.pth', sd), device='cpu')
    assert 'missing keys: unet.out.conv.weight' in str(err.value)
    assert 'unexpected keys: unet.extra.weight' in str(err.value)


def test_misshaped_key_fails_loudly(converted, text2im_state, tmp_path):
    sd = dict(text2im_state)
    sd['unet.out.conv.weight'] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(CheckpointMismatchError, match=r'shape mismatch for unet.out.conv.weight: '
                       r'checkpoint \(3, 32, 3, 3\), model \(6, 32, 3, 3\)'):
        init_model(converted['text2im'][0], _save(tmp_path / 'bad.pth', sd), device='cpu')


def test_wrong_stage_is_named(converted, text2im_state, tmp_path):
    base_only = {k: v for k, v in text2im_state.items() if k.startswith('unet.')}
    with pytest.raises(CheckpointMismatchError, match='the checkpoint has none'):
        init_model(converted['text2im'][0], _save(tmp_path / 'base.pth', base_only), device='cpu')
    cfg = Config.fromfile(converted['text2im'][0])
    for key in ('unet_up', 'diffusion_scheduler_up'):
        cfg.model.pop(key)
    with pytest.raises(CheckpointMismatchError, match=r'holds an upsampler \(unet_up\.\*\)'):
        init_model(cfg, converted['text2im'][1], device='cpu')


def test_inpainting_checkpoint_into_text2im_config(converted):
    with pytest.raises(CheckpointMismatchError, match='7 input channels'):
        init_model(converted['text2im'][0], converted['inpaint'][1], device='cpu')


def test_openai_layout_gets_a_conversion_hint(converted):
    with pytest.raises(CheckpointMismatchError, match='convert it first'):
        init_model(converted['text2im'][0], str(REFERENCE / 'base.pt'), device='cpu')


def test_truncated_and_missing_files(converted, tmp_path):
    data = open(converted['text2im'][1], 'rb').read()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(RuntimeError, match='is truncated or not a PyTorch file'):
        init_model(converted['text2im'][0], str(cut), device='cpu')
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        init_model(converted['text2im'][0], str(tmp_path / 'missing.pth'), device='cpu')
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(RuntimeError, match='checkpoint file is empty'):
        init_model(converted['text2im'][0], str(empty), device='cpu')


def test_runner_checkpoint_with_numpy_meta_loads(converted, text2im_state, tmp_path):
    """mmengine Runner files carry numpy values and HistoryBuffers in meta."""
    import numpy as np
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(1.5)
    path = tmp_path / 'runner.pth'
    torch.save(dict(state_dict=text2im_state, meta=dict(seed=np.int64(3), arr=np.arange(3.),
                                                         hub=dict(loss=buf))), path)
    model = init_model(converted['text2im'][0], str(path), device='cpu')
    assert torch.equal(model.unet.out.conv.weight, text2im_state['unet.out.conv.weight'])


def test_publish_tool_keeps_weights_only(converted, text2im_state, tmp_path):
    base = {k: v for k, v in text2im_state.items() if k.startswith('unet.')}
    up = {k: v + 1 for k, v in text2im_state.items() if k.startswith('unet_up.')}
    torch.save(dict(state_dict=base, ema_state_dict={'steps': torch.tensor(3)},
                    meta=dict(iter=5)), tmp_path / 'base.pth')
    torch.save(dict(state_dict=up, meta=dict(iter=7)), tmp_path / 'up.pth')
    out = tmp_path / 'published.pth'
    run_tool('tools/model_converters/glide_publish.py', tmp_path / 'base.pth', out, '--fp16',
             '--upsampler-from', tmp_path / 'up.pth')
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {'state_dict', 'meta'}
    assert saved['meta'] == dict(iter=5, upsampler_iter=7)
    # the cascade just written can serve as the upsampler source: its upsampler stays iteration 7
    again = tmp_path / 'again.pth'
    run_tool('tools/model_converters/glide_publish.py', tmp_path / 'base.pth', again, '--upsampler-from', out)
    assert torch.load(again, weights_only=True)['meta'] == dict(iter=5, upsampler_iter=7)
    assert all(v.dtype == torch.float16 for v in saved['state_dict'].values())
    model = init_model(converted['text2im'][0], str(out), device='cpu')
    assert model.unet_up.out.conv.weight.dtype == torch.float32
    expected = up['unet_up.out.conv.weight'].half().float()
    assert torch.equal(model.unet_up.out.conv.weight, expected)
    proc = run_tool('tools/model_converters/glide_publish.py', tmp_path / 'nope.pth', out,
                    check=False)
    assert proc.returncode == 1 and 'checkpoint file not found' in proc.stderr
