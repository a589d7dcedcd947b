"""Shared test fixtures: reference tensors and converted tiny checkpoints."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('GLIDE_SHARED', ROOT.parent / 'shared'))
REFERENCE = SHARED / 'fixtures' / 'glide-reference'
MANIFESTS = SHARED / 'fixtures' / 'manifests'

#: why tests marked ``shared`` (or using the fixtures below) skip: None when the fixtures are there
SHARED_MISSING = (None if REFERENCE.is_dir() else
                  f'reference fixtures not found at {REFERENCE} (put the shared folder beside the '
                  'checkout or point GLIDE_SHARED at it)')
#: fixtures that read the shared folder; a test using one of them is a ``shared`` test
SHARED_FIXTURES = {'cases', 'converted', 'reference_model', 'inpaint_model', 'clip_cases', 'converted_clip'}


def pytest_configure(config):
    config.addinivalue_line('markers', 'shared: needs the reference fixtures of ../shared')


def pytest_collection_modifyitems(config, items):
    """Skip, with one reason, the tests that need ``../shared`` when it is absent."""
    if SHARED_MISSING is None:
        return
    skip = pytest.mark.skip(reason=SHARED_MISSING)
    for item in items:
        if item.get_closest_marker('shared') or SHARED_FIXTURES & set(item.fixturenames):
            item.add_marker(skip)


@pytest.fixture(scope='session')
def cases():
    return torch.load(REFERENCE / 'cases.pt', weights_only=True)


def run_tool(*args, check=True, **kwargs):
    """Run a tool of this repo as a user would (``python tools/...``)."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
    return proc


@pytest.fixture(scope='session')
def converted(tmp_path_factory):
    """openai-layout reference models converted by the converter tool.

    Returns a dict name -> (config path, checkpoint path) for ``text2im``
    (base + upsampler) and ``inpaint`` (base-inpaint + upsample-inpaint).
    """
    out = tmp_path_factory.mktemp('converted')
    pairs = dict(text2im=('base.pt', 'upsample.pt'), inpaint=('base-inpaint.pt', 'upsample-inpaint.pt'))
    result = {}
    for name, (base, up) in pairs.items():
        ckpt, cfg = out / f'{name}.pth', out / f'{name}.py'
        run_tool('tools/model_converters/glide_openai_to_mmagic.py', '--base', REFERENCE / base,
                 '--upsample', REFERENCE / up, '--out', ckpt, '--config-out', cfg)
        result[name] = (str(cfg), str(ckpt))
    return result


@pytest.fixture(scope='session')
def reference_model(converted):
    """The tiny reference text2im cascade loaded through ``init_model``."""
    from mmagic.apis import init_model
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    return init_model(*converted['text2im'], device='cpu')


@pytest.fixture(scope='session')
def inpaint_model(converted):
    from mmagic.apis import init_model
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    return init_model(*converted['inpaint'], device='cpu')


@pytest.fixture(scope='session')
def clip_cases():
    return torch.load(REFERENCE / 'clip_cases.pt', weights_only=True)


@pytest.fixture(scope='session')
def converted_clip(tmp_path_factory):
    """(config path, checkpoint path) of the reference base.pt + clip.pt through the converter tool."""
    out = tmp_path_factory.mktemp('clip')
    ckpt, cfg = out / 'glide_clip.pth', out / 'glide_clip.py'
    run_tool('tools/model_converters/glide_openai_to_mmagic.py', '--base', REFERENCE / 'base.pt', '--clip',
             REFERENCE / 'clip.pt', '--out', ckpt, '--config-out', cfg)
    return str(cfg), str(ckpt)


@pytest.fixture(scope='session')
def ckpts(tmp_path_factory):
    """Random-weight checkpoints of both tiny shapes configs (the tool tests' models)."""
    from mmagic.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from tool_helpers import BASE_CFG, CASCADE_CFG

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
