"""tools/benchmark_reference.py: its errors, and one whole run against a stand-in
for openai's checkout (the real one is not bundled), never timed against a threshold.

The stand-in ``glide_text2im`` holds the tiny reference model of ``../shared``
in openai's key layout and runs it through this project's UNet, so the tool's
plumbing (random weights -> openai checkpoint -> converter -> ``init_model``,
the same inputs on both sides, interleaved rows, records) is what is tested."""
import json
import sys
import textwrap

import pytest
from conftest import REFERENCE
from tool_helpers import load_tool

from projects.glide.models.diffusion import respaced_timesteps

STAND_IN = '''
    """A stand-in for openai's glide_text2im.model_creation (tests only)."""
    import torch

    from mmagic.registry import MODELS
    import projects.glide  # noqa: F401  (registers the UNets)
    from projects.glide.convert import convert_openai_checkpoint
    from projects.glide.models.diffusion import respaced_timesteps

    BASE = torch.load({base!r}, weights_only=True)
    CALLS = []  # (tokens rows, timestep) of every model call the stand-in loop makes


    def model_and_diffusion_defaults():
        return dict(BASE['options'])


    class Reference(torch.nn.Module):
        """openai-layout tensors, run through this project's UNet (rebuilt from them)."""

        def __init__(self, options):
            super().__init__()
            self.options = options
            self.names = sorted(BASE['state_dict'])
            self.tensors = torch.nn.ParameterList(
                [torch.nn.Parameter(BASE['state_dict'][k].float()) for k in self.names])
            self.cache_text_emb, self.cache = False, None

        def state_dict(self, *args, **kwargs):
            return {{k: p.detach().clone() for k, p in zip(self.names, self.tensors)}}

        def forward(self, x, t, tokens, mask):
            sd, model = convert_openai_checkpoint(dict(options=self.options, state_dict=self.state_dict()))
            unet = MODELS.build(model['unet'])
            unet.load_state_dict({{k[len('unet.'):]: v for k, v in sd.items()}})
            return unet(x, t, tokens, mask)


    class Diffusion:
        def __init__(self, spec):
            self.spec = spec

        def ddim_sample_loop(self, model, shape, noise, clip_denoised, model_kwargs, device):
            assert noise.shape == shape and clip_denoised
            for t in reversed(respaced_timesteps(self.spec)):
                model(noise, torch.full((shape[0],), t), **model_kwargs)
                CALLS.append((len(model_kwargs['tokens']), t))
            return noise


    def create_model_and_diffusion(**options):
        return Reference(options), Diffusion(options['timestep_respacing'])
'''


@pytest.fixture
def checkout(tmp_path):
    package = tmp_path / 'glide_text2im'
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / 'model_creation.py').write_text(
        textwrap.dedent(STAND_IN.format(base=str(REFERENCE / 'base.pt'))))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith('glide_text2im')]:
        del sys.modules[name]


@pytest.mark.shared
def test_one_run_against_a_stand_in(checkout, tmp_path, capsys):
    tool = load_tool('benchmark_reference')
    table = tmp_path / 'table.md'
    # the flags give the tiny model's options (head counts included, which the converter reads)
    assert tool.main(['--reference', str(checkout), '--device', 'cpu', '--steps', 'ddim3',
                      '--num-channels', '32', '--num-res-blocks', '1', '--xf-width', '32',
                      '--xf-layers', '2', '--xf-heads', '2',
                      '--batch-size', '2', '--variants', 'fp32,fp32+cl,bf16', '--repeats', '2',
                      '--markdown', str(table)]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
    assert [r['row'] for r in records] == ['reference', 'reference, cache_text_emb', 'fp32-eager',
                                           'fp32-channels_last-eager', 'bf16-eager']
    for r in records:
        assert r['runs'] == 2 and r['batch_size'] == 2 and r['steps'] == 'ddim3'
        assert r['call_ms'] > 0 and r['loop_s'] > 0
    # the same weights and the same inputs on both sides: the same guided call in float32 (also
    # in the second round, after the bf16 row), a bf16 one within bf16's rounding
    assert max(r['call_max_abs_diff'] for r in records[:4]) < 1e-4
    assert 1e-4 < records[4]['call_max_abs_diff'] < 0.1
    assert records[0]['call_speedup'] == records[0]['loop_speedup'] == 1.0
    assert records[2]['call_speedup'] == pytest.approx(records[0]['call_ms'] / records[2]['call_ms'],
                                                       rel=1e-2)
    # the stand-in loop returns its start noise, so our DDIM samples differ from it
    assert records[2]['loop_max_abs_diff'] > 0.1
    # every reference loop (2 rows x 2 rounds): 3 guided calls on 2B rows (conditional +
    # unconditional prompts), the kept timesteps from the largest down
    kept = respaced_timesteps('ddim3')
    assert len(kept) == 3 and kept[-1] > 600
    calls = sys.modules['glide_text2im.model_creation'].CALLS
    assert calls == [(4, t) for t in reversed(kept)] * 4
    assert table.read_text().splitlines()[0].startswith('| row | guided call ms |')
    assert err.endswith(table.read_text())


def test_not_a_checkout(tmp_path, capsys):
    tool = load_tool('benchmark_reference')
    assert tool.main(['--reference', str(tmp_path), '--device', 'cpu']) == 1
    assert capsys.readouterr().err == (
        f'error: --reference must be a checkout of openai/glide-text2im (a folder holding '
        f'glide_text2im/model_creation.py), got {tmp_path}\n')


def test_checkout_that_does_not_import(checkout, capsys):
    (checkout / 'glide_text2im' / 'model_creation.py').write_text('from .nn import missing\n')
    tool = load_tool('benchmark_reference')
    assert tool.main(['--reference', str(checkout), '--device', 'cpu']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: cannot import glide_text2im from {checkout}: ')
    assert "No module named 'glide_text2im.nn'" in err


def test_bad_variant(checkout, capsys):
    tool = load_tool('benchmark_reference')
    assert tool.main(['--reference', str(checkout), '--device', 'cpu', '--variants', 'fp64']) == 1
    assert capsys.readouterr().err.startswith("error: --variants must list DTYPE")
