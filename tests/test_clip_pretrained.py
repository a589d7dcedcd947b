"""A noise-aware CLIP that loads its own weights (``NoisedCLIP(pretrained=...)``),
so a config can pair the bundled base model with the bundled CLIP, and the
configs that do: the bundled CLIP-guided ones and openai's full-size one."""
import pytest
import torch
from conftest import ROOT
from mmagic.registry import MODELS
from mmengine import Config
from mmengine.registry import init_default_scope

from projects.glide.checkpoint import CheckpointMismatchError

init_default_scope('mmagic')
CONFIGS = ROOT / 'projects' / 'glide' / 'configs'
WEIGHTS = 'projects/glide/weights/glide_clip_tiny_shapes-64x64.pth'


def clip_cfg(**kwargs):
    return dict(Config.fromfile(str(CONFIGS / 'glide_clip_tiny_shapes-64x64.py')).model.clip, **kwargs)


def bundled_clip_state():
    state = torch.load(ROOT / WEIGHTS, weights_only=True)
    state = state.get('state_dict', state)
    return {k[len('clip.'):]: v.float() for k, v in state.items() if k.startswith('clip.')}


def test_pretrained_loads_the_bundled_clip_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative path resolves from the project root
    clip = MODELS.build(clip_cfg(pretrained=WEIGHTS))
    expected = bundled_clip_state()
    ours = clip.state_dict()
    assert set(ours) == set(expected)
    assert all(torch.equal(ours[k], expected[k]) and ours[k].dtype == torch.float32 for k in expected)


def test_pretrained_accepts_a_bare_state_dict(tmp_path):
    torch.save(bundled_clip_state(), tmp_path / 'bare.pth')
    clip = MODELS.build(clip_cfg(pretrained=str(tmp_path / 'bare.pth')))
    assert torch.equal(clip.text_encoder.proj.weight, bundled_clip_state()['text_encoder.proj.weight'])


def test_pretrained_errors_name_the_file_or_the_keys(tmp_path):
    with pytest.raises((FileNotFoundError, RuntimeError, ValueError), match='nope.pth'):
        MODELS.build(clip_cfg(pretrained=str(tmp_path / 'nope.pth')))
    wider = clip_cfg(pretrained=WEIGHTS)
    wider['text_encoder'] = dict(wider['text_encoder'], width=96)
    with pytest.raises(CheckpointMismatchError, match='shape mismatch for text_encoder'):
        MODELS.build(wider)


@pytest.mark.shared
def test_openai_clip_guided_config_matches_the_released_layout():
    """glide_clip-guided_openai-64x64.py: openai's base model keys plus its CLIP's, under ``clip.``."""
    import json

    from conftest import MANIFESTS

    from projects.glide.convert import openai_clip_key_to_mmagic, openai_key_to_mmagic
    cfg = Config.fromfile(str(CONFIGS / 'glide_clip-guided_openai-64x64.py'))
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    base = json.loads((MANIFESTS / 'openai-base.json').read_text())['state_dict']
    clip = json.loads((MANIFESTS / 'openai-clip.json').read_text())
    expected = {f'unet.{openai_key_to_mmagic(k)}': tuple(v) for k, v in base.items()}
    expected.update({f'clip.{tower}.{openai_clip_key_to_mmagic(k)}': tuple(v)
                     for tower in ('image_encoder', 'text_encoder') for k, v in clip[tower]['state_dict'].items()})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert cfg.model.test_cfg == dict(guidance_scale=1., num_inference_steps=100, classifier_scale=3., sampler='ddpm')


def test_bundled_clip_guided_config_through_init_model():
    """The bundled base checkpoint (no clip. keys) loads strictly into the CLIP-guided config."""
    from mmagic.apis import init_model
    model = init_model(str(CONFIGS / 'glide_tiny_shapes-64x64_clip-rerank.py'),
                       str(ROOT / 'projects/glide/weights/glide_tiny_shapes-64x64.pth'), device='cpu')
    expected = bundled_clip_state()
    assert all(torch.equal(v, expected[k]) for k, v in model.clip.state_dict().items())
    assert model.test_cfg['rerank'] == 8
    out = model.infer(prompt='a red circle above a blue square on a yellow background', num_inference_steps=2,
                      rerank=2, classifier_scale=5., seed=0, guidance_scale=model.test_cfg['guidance_scale'])
    assert out['samples'].shape == (1, 3, 64, 64) and out['rerank_scores'].shape == (1, 2)
    # strict for everything else: a base checkpoint without a UNet key still fails
    state = torch.load(ROOT / 'projects/glide/weights/glide_tiny_shapes-64x64.pth', weights_only=True)
    state = state.get('state_dict', state)
    state.pop(next(k for k in state if k.startswith('unet.')))
    with pytest.raises(CheckpointMismatchError, match='missing keys: unet.'):
        model.load_state_dict(state)


def test_loading_without_clip_keys_is_quiet_and_strict_for_torch_too(caplog, capsys):
    """mmengine's loader reports no missing clip keys; torch's strict load_state_dict accepts the file."""
    from mmengine.runner.checkpoint import load_checkpoint
    model = MODELS.build(Config.fromfile(str(CONFIGS / 'glide_tiny_shapes-64x64_clip-rerank.py')).model)
    with caplog.at_level('WARNING'):
        load_checkpoint(model, str(ROOT / 'projects/glide/weights/glide_tiny_shapes-64x64.pth'), map_location='cpu')
    out = capsys.readouterr()
    assert 'Loads checkpoint' in out.out + out.err + caplog.text  # the loader's report was captured
    assert 'missing keys' not in out.out + out.err + caplog.text
    state = torch.load(ROOT / 'projects/glide/weights/glide_tiny_shapes-64x64.pth', weights_only=True)
    result = model.load_state_dict(state.get('state_dict', state))
    assert result.missing_keys == [] and result.unexpected_keys == []
    expected = bundled_clip_state()
    assert all(torch.equal(v, expected[k]) for k, v in model.clip.state_dict().items())
