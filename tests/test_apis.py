"""``projects.glide.apis.init_glide``: the model ``mmagic.apis.init_model``
builds, without importing mmagic's own models."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

CONFIG = ROOT / 'projects' / 'glide' / 'configs' / 'glide_tiny_shapes-64-256.py'
WEIGHTS = ROOT / 'projects' / 'glide' / 'weights'


def test_init_glide_builds_what_init_model_builds():
    from mmagic.apis import init_model

    from projects.glide.apis import init_glide
    ours = init_glide(str(CONFIG), str(WEIGHTS / 'glide_tiny_shapes-64-256.pth'))
    theirs = init_model(str(CONFIG), str(WEIGHTS / 'glide_tiny_shapes-64-256.pth'), device='cpu')
    assert type(ours) is type(theirs) and not ours.training
    assert type(ours.data_preprocessor) is type(theirs.data_preprocessor)
    assert ours.test_cfg == theirs.test_cfg == dict(guidance_scale=3., num_inference_steps=25,
                                                     num_inference_steps_up='ddim10', upsample_strength=0.4)
    assert ours.cfg.filename == theirs.cfg.filename == str(CONFIG)
    mine, other = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(other)
    assert all(torch.equal(mine[k], other[k]) for k in mine)
    kwargs = dict(prompt='a red circle', batch_size=1, num_inference_steps=2, num_inference_steps_up=2,
                  seed=3)
    with torch.no_grad():
        assert torch.equal(ours.infer(**kwargs)['samples'], theirs.infer(**kwargs)['samples'])


def test_init_glide_without_checkpoint_keeps_initial_weights_and_accepts_a_config():
    from mmengine import Config

    from projects.glide.apis import init_glide
    torch.manual_seed(0)
    model = init_glide(Config.fromfile(str(CONFIG)))
    assert model.device == torch.device('cpu') and not model.training
    assert model.unet_up.image_size == 256


def test_init_glide_refuses_a_checkpoint_that_does_not_fit():
    from projects.glide.apis import init_glide
    from projects.glide.checkpoint import CheckpointMismatchError
    with pytest.raises(CheckpointMismatchError, match='missing keys: unet_up'):
        init_glide(str(CONFIG), str(WEIGHTS / 'glide_tiny_shapes-64x64.pth'))


def test_init_glide_bad_config():
    from projects.glide.apis import init_glide
    with pytest.raises(TypeError, match='config must be a file name or an mmengine Config, got dict'):
        init_glide(dict(model=dict(type='Glide')))
    with pytest.raises(FileNotFoundError, match='nope.py'):
        init_glide('nope.py')


def test_init_glide_imports_no_mmagic_model_unless_the_config_names_one():
    """The bundled cascade builds with mmagic's registry alone; a config naming one of mmagic's own
    types (here its DataPreprocessor) still builds, importing mmagic's models then."""
    code = f"""
import sys
from mmengine import Config
from projects.glide.apis import init_glide
init_glide({str(CONFIG)!r}, {str(WEIGHTS / 'glide_tiny_shapes-64-256.pth')!r})
print(sorted(m for m in sys.modules if m.startswith('mmagic.')))
config = Config.fromfile({str(CONFIG)!r})
config.model.data_preprocessor = dict(type='DataPreprocessor')
model = init_glide(config)
print(type(model.data_preprocessor).__module__, 'mmagic.models' in sys.modules)
"""
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-2:] == [
        "['mmagic.registry', 'mmagic.version']", 'mmagic.models.data_preprocessors.data_preprocessor True']
