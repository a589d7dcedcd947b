"""Composable prompts and CLIP re-ranking (``models/prompting.py``) through ``Glide.infer``.

The model is the reference base model + noise-aware CLIP through the
converter (``converted_clip``). Composition is checked against the formula
written out step by step with the public UNet and scheduler; re-ranking
against the candidates drawn without it and scored by the CLIP directly.
"""
import copy

import pytest
import torch
from mmengine.registry import init_default_scope

from projects.glide.models.prompting import Composition, clip_text_vectors, parse_prompt, plain_text

pytestmark = pytest.mark.shared


@pytest.fixture(scope='module')
def model(converted_clip):
    from mmagic.apis import init_model
    init_default_scope('mmagic')
    return init_model(*converted_clip, device='cpu')


def test_parse_prompt_syntax():
    assert parse_prompt('a red circle') == [('a red circle', 1.)]
    assert parse_prompt('a cat AND a dog NOT snow  AND grass') == [('a cat', 1.), ('a dog', 1.), ('snow', -1.),
                                                                    ('grass', 1.)]
    # only the upper-case keywords between spaces compose
    assert parse_prompt('salt and pepper, ANDROID, NOTE') == [('salt and pepper, ANDROID, NOTE', 1.)]
    for bad in ('a cat AND  AND a dog', 'a cat AND   '):
        with pytest.raises(ValueError, match='has an empty part'):
            parse_prompt(bad)
    assert plain_text('a cat AND a dog NOT snow') == 'a cat and a dog'
    assert plain_text('a cat') == 'a cat'


def test_composition_rows_and_weights():
    comp, texts = Composition.from_prompts(['a AND b NOT c', 'd'], 3., 'cpu')
    assert texts == ['a', 'b', 'c', 'd']
    assert comp.rows.tolist() == [0, 0, 0, 1] and comp.first.tolist() == [0, 3]
    assert comp.weights.tolist() == [3., 3., -3., 3.]
    x = torch.arange(2.).view(2, 1)
    assert comp.expand(x).view(-1).tolist() == [0., 0., 0., 1., 0., 1.]


def test_composed_prompt_follows_the_formula(model):
    """eps = eps_u + w (eps_a - eps_u) + w (eps_b - eps_u) - w (eps_c - eps_u),
    the first part's variance, for every DDIM step."""
    parts, w, steps = ['a red cube', 'on grass', 'in the snow'], 2.5, 3
    noise = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    composed = model.infer(prompt=f'{parts[0]} AND {parts[1]} NOT {parts[2]}', guidance_scale=w,
                           num_inference_steps=steps, init_image=noise)['samples']

    scheduler = copy.deepcopy(model.diffusion_scheduler)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        emb = model.unet.encode_text(*model.tokenizer(parts + [''], device='cpu'))
        x = noise
        for t in scheduler.timesteps:
            out = model.unet(x.expand(4, -1, -1, -1), t.expand(4), text_emb=emb).float()
            e_a, e_b, e_c, e_u = out[:, :3].split(1)
            eps = e_u + w * (e_a - e_u) + w * (e_b - e_u) - w * (e_c - e_u)
            x = scheduler.step(torch.cat([eps, out[:1, 3:]], dim=1), t, x).prev_sample
    assert (composed - x).abs().max() < 1e-5
    plain = model.infer(prompt=parts[0], guidance_scale=w, num_inference_steps=steps, init_image=noise)['samples']
    assert (composed - plain).abs().max() > 1e-2  # the other parts matter


def test_a_prompt_twice_at_half_scale_is_the_prompt(model):
    kwargs = dict(num_inference_steps=3, seed=4)
    once = model.infer(prompt='a blue ball', guidance_scale=4., **kwargs)['samples']
    twice = model.infer(prompt='a blue ball AND a blue ball', guidance_scale=2., **kwargs)['samples']
    assert (once - twice).abs().max() < 1e-5


def test_batches_mix_composed_and_plain_prompts(model):
    kwargs = dict(num_inference_steps=2, guidance_scale=3.)
    noise = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    batch = model.infer(prompt=['a cat AND a hat', 'a dog'], init_image=noise, **kwargs)['samples']
    alone = [model.infer(prompt=p, init_image=noise[i:i + 1], **kwargs)['samples']
             for i, p in enumerate(['a cat AND a hat', 'a dog'])]
    # a batch of 5 UNet rows rounds differently from batches of 3 and 2 (~1e-5)
    assert (batch - torch.cat(alone)).abs().max() < 1e-4
    assert (batch[0] - batch[1]).abs().max() > 1e-2


def test_clip_text_vector_of_a_composed_prompt(model):
    z = clip_text_vectors(model.clip, ['a cat AND a hat NOT rain', 'a dog'])
    single = clip_text_vectors(model.clip, ['a cat', 'a hat', 'rain', 'a dog'])
    assert torch.allclose(z[0], single[0] + single[1] - single[2], atol=1e-6)
    assert torch.equal(z[1], single[3])


def test_rerank_keeps_the_clip_best_candidate(model):
    prompts, n, steps = ['a red cube', 'a green ball'], 3, 2
    noise = torch.randn(len(prompts) * n, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = model.infer(prompt=prompts, rerank=n, init_image=noise, num_inference_steps=steps)
    candidates = model.infer(prompt=[p for p in prompts for _ in range(n)], init_image=noise,
                             num_inference_steps=steps)['samples']
    with torch.no_grad():
        text = model.clip.encode_text(*model.clip.tokenize(prompts)).repeat_interleave(n, 0)
        scores = model.clip.similarity(text, model.clip.encode_image(candidates, 0)).view(2, n)
    assert out['rerank_scores'].shape == (2, n)
    assert torch.allclose(out['rerank_scores'], scores, atol=1e-5)
    best = scores.argmax(1)
    assert torch.equal(out['samples'], candidates.view(2, n, 3, 64, 64)[torch.arange(2), best])
    assert out['samples'].shape == (2, 3, 64, 64)


def test_rerank_one_is_no_rerank(model):
    kwargs = dict(prompt='a red cube', num_inference_steps=2, seed=3)
    plain = model.infer(**kwargs)
    once = model.infer(rerank=1, **kwargs)
    assert torch.equal(plain['samples'], once['samples']) and set(once) == {'samples'}


def test_rerank_is_seeded(model):
    kwargs = dict(prompt='a red cube', num_inference_steps=2, seed=5, rerank=2)
    a, b = model.infer(**kwargs), model.infer(**kwargs)
    assert torch.equal(a['samples'], b['samples']) and torch.equal(a['rerank_scores'], b['rerank_scores'])


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(rerank=0), ValueError, r'rerank \(candidates per prompt, scored by the CLIP\) must be None or an int >= 1'),
    (dict(rerank=2.), ValueError, 'rerank .* got 2.0'),
    (dict(rerank=True), ValueError, 'rerank .* got True'),
    (dict(prompt='a AND  NOT b'), ValueError, "composed prompt 'a AND  NOT b' has an empty part"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), rerank=2), ValueError, r'init_image must have shape \(2, 3, 64, 64\)'),
])
def test_bad_arguments(model, kwargs, error, message):
    kwargs = {'prompt': 'a', 'num_inference_steps': 1, **kwargs}
    with pytest.raises(error, match=message):
        model.infer(**kwargs)


def test_rerank_needs_a_clip_and_no_text_emb(model, monkeypatch):
    emb = model.encode_prompt('a')
    with pytest.raises(ValueError, match='no rerank'):
        model.infer(text_emb=emb, rerank=2, num_inference_steps=1)
    monkeypatch.setattr(model, 'clip', None)
    with pytest.raises(ValueError, match='rerank > 1 needs a noise-aware CLIP: this model has none'):
        model.infer(prompt='a', rerank=2, num_inference_steps=1)
