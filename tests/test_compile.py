"""``Glide.compile``: one static-shape graph per stage, outputs equal to eager.

The graphs are checked with a counting backend (it runs the captured graph
as is) and with ``aot_eager``; inductor, which generates and builds C++ for
the CPU, takes minutes per UNet on a small CPU and is measured by
``tools/benchmark.py --variants fp32,fp32+compile`` instead.
"""
import pytest
import torch
from conftest import ROOT

CONFIG = ROOT / 'projects' / 'glide' / 'configs' / 'glide_tiny_shapes-64-256.py'
KWARGS = dict(prompt='a red circle', batch_size=1, num_inference_steps=2, num_inference_steps_up=2, seed=0)


@pytest.fixture
def cascade():
    from projects.glide.apis import init_glide
    torch.manual_seed(0)
    torch._dynamo.reset()
    yield init_glide(str(CONFIG))
    torch._dynamo.reset()


def _sample(model, **kwargs):
    with torch.no_grad():
        return model.infer(**{**KWARGS, **kwargs})['samples']


def test_one_graph_per_stage_and_equal_outputs(cascade):
    eager = _sample(cascade)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    cascade.compile(backend=counting_backend)
    assert cascade.compile(backend=counting_backend) is cascade  # recompiles the eager forward
    assert torch.equal(_sample(cascade), eager)
    assert torch.equal(_sample(cascade), eager)  # the second loop reuses both graphs
    assert len(graphs) == 2  # one per stage: not one per step, and no compiled forward wrapped again


def test_aot_eager_matches_eager_and_uncompile_restores(cascade):
    from projects.glide.models.compile import uncompile_unet
    cascade.unet_up = cascade.diffusion_scheduler_up = None
    eager = _sample(cascade)
    cascade.compile(backend='aot_eager')
    assert 'forward' in vars(cascade.unet)
    torch.testing.assert_close(_sample(cascade), eager, atol=1e-5, rtol=0)
    uncompile_unet(cascade.unet)
    assert 'forward' not in vars(cascade.unet)
    assert torch.equal(_sample(cascade), eager)
