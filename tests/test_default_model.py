"""The bundled default model: it ships, loads strictly and drives the demo
with no arguments beyond a prompt (the README's main command)."""
import torch
from PIL import Image

from conftest import ROOT, run_tool

WEIGHTS = ROOT / 'projects' / 'glide' / 'weights'
CONFIG = ROOT / 'projects' / 'glide' / 'configs' / 'glide_tiny_shapes-64x64.py'


def test_weights_ship_small_and_load_strictly():
    from mmengine.registry import init_default_scope

    from mmagic.apis import init_model
    files = sorted(WEIGHTS.glob('*.pth'))
    assert [f.name for f in files] == ['glide_tiny_shapes-64x64.pth']
    assert sum(f.stat().st_size for f in files) < 30 * 2**20
    saved = torch.load(files[0], weights_only=True)
    assert saved['meta']['iter'] > 0
    init_default_scope('mmagic')
    model = init_model(str(CONFIG), str(files[0]), device='cpu')
    key = 'unet.out.conv.weight'
    assert torch.equal(model.state_dict()[key], saved['state_dict'][key].float())


def test_demo_defaults_write_a_captioned_png(tmp_path):
    out = tmp_path / 'demo.png'
    proc = run_tool('tools/glide_demo.py', 'a red circle above a blue square on a yellow background',
                    '--steps', '3', '--out', out)
    assert 'GLIDE base' in proc.stderr  # progress bar
    with Image.open(out) as im:
        assert im.mode == 'RGB' and im.size[0] >= 64 and im.size[1] > 64
        assert im.text['prompts'] == 'a red circle above a blue square on a yellow background'
