"""Training the bundled noise-aware CLIP of the shapes world: hard-negative
captions, the contrastive loss, the retrieval metric, the config and one
training iteration through tools/train.py."""
import os
import os.path as osp
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from mmagic.registry import MODELS
from mmengine import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import projects.glide  # noqa: F401  (registers the models)
from projects.glide.checkpoint import CheckpointMismatchError
from projects.glide.datasets.shapes import Scene, Shape, ShapesDataset, is_held_out, parse_caption
from projects.glide.datasets.shapes.negatives import (
    NEGATIVE_TYPES,
    HardNegativeCaptions,
    collate_hard_negatives,
    describes,
    hard_negatives,
    meaning,
    negative_candidates,
)
from projects.glide.evaluation.clip_retrieval import CLIPRetrievalAccuracy
from projects.glide.models.clip.training import NoisedCLIPModel

init_default_scope('mmagic')
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'projects', 'glide', 'configs', 'glide_clip_tiny_shapes-64x64.py')
TINY_CLIP = dict(type='NoisedCLIP', embed_dim=16, logit_scale=30.,
                 text_encoder=dict(width=16, heads=2, layers=1, vocab_size=49408, text_ctx=32),
                 image_encoder=dict(width=16, heads=2, layers=1, image_size=64, patch_size=16,
                                    num_timesteps=1000))
TWO = Scene('white', [Shape('triangle', 'blue', 'large', None, (0.5, 0.3), 0.42),
                      Shape('circle', 'red', 'small', None, (0.5, 0.75), 0.25)], 'above')
ONE = Scene('blue', [Shape('circle', 'red', 'small', 'left', (0.2, 0.5), 0.25)])


def texts_by_type(prompt, scene):
    found = {}
    for neg in negative_candidates(prompt, scene):
        found.setdefault(neg.type, set()).add(neg.text)
    return found


# ------------------------------------------------------------- negatives --
def test_binding_negatives_of_a_two_shape_caption():
    found = texts_by_type('A blue triangle above a red circle on a white background.', TWO)
    assert found['kinds_swapped'] == {'A blue circle above a red triangle on a white background.'}
    assert found['colors_swapped'] == {'A red triangle above a blue circle on a white background.'}
    assert found['relation_flipped'] == {
        'A red circle above a blue triangle on a white background.',
        'A blue triangle below a red circle on a white background.',
        'A blue triangle under a red circle on a white background.',
        'A blue triangle beneath a red circle on a white background.'}
    assert found['kind_changed'] == {
        'A blue square above a red circle on a white background.',
        'A blue triangle above a red square on a white background.',
        'A blue triangle above a red triangle on a white background.',
        'A blue circle above a red circle on a white background.'}
    # sizes the caption leaves out come in wrong: the triangle is large, the circle small
    assert found['size_changed'] == {
        'A small blue triangle above a red circle on a white background.',
        'A little blue triangle above a red circle on a white background.',
        'A blue triangle above a large red circle on a white background.',
        'A blue triangle above a big red circle on a white background.'}
    assert 'position_changed' not in found
    # a colour change keeps the shapes distinct and off the background; articles follow
    assert 'A blue triangle above an orange circle on a white background.' in found['color_changed']
    assert not any('white circle' in t or 'white triangle' in t for t in found['color_changed'])
    assert 'A blue triangle above a blue circle on a white background.' in found['color_changed']
    # green triangles are held out: never a negative of a scene that is not
    assert not any('green triangle' in t for ts in found.values() for t in ts)
    same_color = Scene('white', [replace(TWO.shapes[0], color='red'), TWO.shapes[1]], 'above')
    found = texts_by_type('a red triangle above a red circle on a white background', same_color)
    assert 'colors_swapped' not in found  # nothing to swap
    assert 'a red circle above a red circle on a white background' not in found['kind_changed']


def test_negatives_keep_wording_case_and_punctuation():
    scene = Scene('blue', [Shape('circle', 'black', 'large', None, (0.5, 0.8), 0.42),
                           Shape('triangle', 'red', 'large', None, (0.5, 0.3), 0.42)], 'below')
    found = texts_by_type('A Large Black Circle Below A Big Red Triangle, Blue Background', scene)
    assert found['kinds_swapped'] == {'A Large Black Triangle Below A Big Red Circle, Blue Background'}
    assert 'A Big Red Triangle Below A Large Black Circle, Blue Background' in found['relation_flipped']
    assert 'A Large Black Circle Below A Big Orange Triangle, Blue Background' in found['color_changed']
    found = texts_by_type('On the left, a little red circle against a blue background!', ONE)
    assert found['size_changed'] == {'On the left, a large red circle against a blue background!',
                                     'On the left, a big red circle against a blue background!'}
    assert 'At the top, a little red circle against a blue background!' in found['position_changed']
    assert 'On the left, a little red circle against an orange background!' in found['background_changed']
    assert found['background_changed'].isdisjoint({'On the left, a little red circle against a red '
                                                   'background!'})


def test_every_negative_parses_to_its_change():
    ds = ShapesDataset('train', size=400, seed=3, two_shape_prob=0.5)
    counts = dict.fromkeys(NEGATIVE_TYPES, 0)
    for i in range(len(ds)):
        scene, prompt = ds.get_scene(i)
        spec = parse_caption(prompt)
        for neg in negative_candidates(prompt, scene):
            counts[neg.type] += 1
            got = parse_caption(neg.text)
            assert not describes(got, scene) and neg.meaning == meaning(got) != meaning(spec), neg
            assert not is_held_out(got), neg
            assert meaning(got) == meaning(intended(spec, scene, neg.type, got)), neg
    assert all(n > 50 for n in counts.values()), counts


def intended(spec, scene, neg_type, got):
    """``spec`` with the change of ``neg_type`` applied, taking the new value
    from ``got`` only where the type leaves a choice (which colour, ...)."""
    a = spec.shapes
    if neg_type == 'kinds_swapped':
        return replace(spec, shapes=[replace(a[0], kind=a[1].kind), replace(a[1], kind=a[0].kind)])
    if neg_type == 'colors_swapped':
        return replace(spec, shapes=[replace(a[0], color=a[1].color), replace(a[1], color=a[0].color)])
    if neg_type == 'relation_flipped':
        flip = {'above': 'below', 'below': 'above', 'to the left of': 'to the right of',
                'to the right of': 'to the left of'}
        return replace(spec, relation=flip[spec.relation])
    if neg_type == 'background_changed':
        assert got.background != spec.background
        return replace(spec, background=got.background)
    field = neg_type.split('_')[0]
    changed = [i for i, (s, g) in enumerate(zip(a, got.shapes)) if getattr(s, field) != getattr(g, field)]
    assert len(changed) == 1, (neg_type, spec, got)
    i = changed[0]
    if field == 'size':  # stated or not before, now the size the shape does not have
        assert got.shapes[i].size != scene.shapes[i].size
    shapes = list(a)
    shapes[i] = replace(a[i], **{field: getattr(got.shapes[i], field)})
    return replace(spec, shapes=shapes)


def test_held_out_scenes_may_have_held_out_negatives():
    scene = Scene('white', [Shape('triangle', 'green', 'small', 'top', (0.5, 0.2), 0.25)])
    found = texts_by_type('a green triangle at the top on a white background', scene)
    assert 'a green triangle at the top on a black background' in found['background_changed']
    assert 'a purple circle at the top on a white background' not in found['color_changed']


def test_hard_negatives_cover_the_binding_types_first_and_are_deterministic():
    prompt = 'A blue triangle above a red circle on a white background.'
    negs = hard_negatives(prompt, TWO, 4, np.random.default_rng(0))
    assert [n.type for n in negs[:3]] == ['kinds_swapped', 'colors_swapped', 'relation_flipped']
    assert len({n.meaning for n in negs}) == 4
    again = hard_negatives(prompt, TWO, 4, np.random.default_rng(0))
    assert negs == again
    # more negatives than distinct meanings exist: they repeat from the first
    many = hard_negatives('a red circle on the left on a blue background', ONE, 40,
                          np.random.default_rng(1))
    distinct = len({n.meaning for n in many})
    assert 10 < distinct < 40 and many[distinct:2 * distinct] == many[:distinct]
    with pytest.raises(ValueError, match="caption 'a red square on a blue background' does not"):
        negative_candidates('a red square on a blue background', ONE)


def test_transform_depends_on_index_and_seed_only():
    make = lambda seed: ShapesDataset('train', size=50, seed=7, pipeline=[  # noqa: E731
        dict(type='HardNegativeCaptions', num=3, seed=seed)])
    first, second, other = make(0), make(0), make(1)
    items = [first[i] for i in range(20)]
    assert all(len(it['negatives']) == 3 == len(it['negative_types']) for it in items)
    assert [it['negatives'] for it in items] == [second[i]['negatives'] for i in range(20)]
    assert [it['negatives'] for it in items] != [other[i]['negatives'] for i in range(20)]
    with pytest.raises(ValueError, match='HardNegativeCaptions: num must be an int >= 1, got 0'):
        HardNegativeCaptions(num=0)
    with pytest.raises(KeyError, match=r"needs the item keys \['scene', 'index'\]"):
        HardNegativeCaptions()(dict(prompt='a red circle on a blue background'))


def test_collate_keeps_negatives_per_item_and_marks_matching_captions():
    ds = ShapesDataset('train', size=8, seed=0, pipeline=[dict(type='HardNegativeCaptions', num=2)])
    items = [ds[i] for i in range(3)]
    twin = dict(items[0], prompt='a red circle on a blue background', index=9)
    twin['scene'] = ONE.to_dict()
    same = dict(twin, prompt='A small red circle, blue background')
    batch = collate_hard_negatives(items + [twin, same])
    assert batch['negatives'] == [it['negatives'] for it in items + [twin, same]]
    assert batch['img'].shape == (5, 3, 64, 64) and batch['index'].tolist() == [0, 1, 2, 9, 9]
    matches = batch['caption_matches']
    assert matches.dtype == torch.bool and matches.diagonal().all()
    assert matches[3, 4] and matches[4, 3] and matches[:3, 3:].sum() == 0


# ------------------------------------------------------------------ model --
@pytest.fixture(scope='module')
def batch():
    ds = ShapesDataset('train', size=16, seed=0, two_shape_prob=0.5,
                       pipeline=[dict(type='HardNegativeCaptions', num=3)])
    return collate_hard_negatives([ds[i] for i in range(6)])


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return NoisedCLIPModel(clip=TINY_CLIP)


def test_loss_is_finite_reaches_both_towers_and_falls(batch):
    model = tiny_model()
    losses = model(mode='loss', **batch)
    assert set(losses) == {'loss_image', 'loss_text', 'acc_hard'}
    assert all(torch.isfinite(v) for v in losses.values())
    (losses['loss_image'] + losses['loss_text']).backward()
    for tower in (model.clip.text_encoder, model.clip.image_encoder):
        grads = [p.grad for p in tower.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(12):
        torch.manual_seed(1)  # the same timesteps and noise at every step
        losses = model.loss(batch)
        total = losses['loss_image'] + losses['loss_text']
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert history[-1] < 0.5 * history[0], history


def test_loss_terms_by_hand(batch):
    model = tiny_model()
    b = len(batch['prompt'])
    all_match = dict(batch, caption_matches=torch.ones(b, b, dtype=torch.bool))
    torch.manual_seed(2)
    losses = model.loss(all_match)
    # every caption true of every image: only the own image is left for each caption
    assert losses['loss_text'].item() == 0
    torch.manual_seed(2)
    t = torch.randint(0, 1000, (b, ))
    z_image = model.clip.encode_image(model.diffusion.q_sample(batch['img'], t), t)
    z_text = model._text_embeddings(batch['prompt'], batch['negatives'])
    logits = 30 * torch.einsum('bd,bkd->bk', z_image, z_text)  # own caption first
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
    torch.testing.assert_close(losses['loss_image'], expected)
    assert losses['acc_hard'].item() == 100. * (logits[:, :1] > logits[:, 1:]).all(1).float().mean()
    # without negatives: plain CLIP loss
    plain = {k: v for k, v in batch.items() if k != 'negatives'}
    assert set(model.loss(plain)) == {'loss_image', 'loss_text'}


def test_bad_inputs(batch):
    model = tiny_model()
    bad = dict(batch, negatives=batch['negatives'][:-1])
    with pytest.raises(ValueError, match='negatives must hold one list of K captions per item'):
        model.loss(bad)
    with pytest.raises(ValueError, match='predict needs hard negatives'):
        model.predict({k: v for k, v in batch.items() if k != 'negatives'})
    with pytest.raises(ValueError, match=r'eval_timesteps must be .* in \[0, 1000\), got \[0, 1000\]'):
        NoisedCLIPModel(clip=TINY_CLIP, eval_timesteps=(0, 1000))
    with pytest.raises(TypeError, match='clip must build a NoisedCLIP, got GlideTokenizer'):
        NoisedCLIPModel(clip=dict(type='GlideTokenizer'))
    with pytest.raises(ValueError, match="mode must be 'loss', 'predict' or 'tensor'"):
        model(mode='sample', **batch)
    state = model.state_dict()
    state['clip.text_encoder.proj.weight'] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatchError, match='clip.text_encoder.proj.weight'):
        model.load_state_dict(state)


def test_predict_scores_each_item_with_its_own_noise(batch):
    model = tiny_model().eval()
    items = model(mode='predict', **batch)
    assert len(items) == 6
    item = items[2]
    assert item['timesteps'] == [0, 250, 500, 750, 900] and item['logits'].shape == (5, 4)
    assert item['negatives'] == batch['negatives'][2] and item['index'] == 2
    assert item['negative_types'] == batch['negative_types'][2]
    assert item['image'].dtype == torch.uint8 and item['image'].shape == (3, 64, 64)
    alone = {k: batch[k][2:3] for k in ('img', 'prompt', 'index', 'negatives')}
    torch.testing.assert_close(model.predict(alone)[0]['logits'], item['logits'])
    logits = model(mode='tensor', **batch)
    assert logits.shape == (6, 5, 4)


# ----------------------------------------------------------------- metric --
def test_retrieval_metric_by_hand():
    metric = CLIPRetrievalAccuracy()
    samples = [
        dict(timesteps=[0, 900], negative_types=['kinds_swapped', 'kind_changed'],
             logits=torch.tensor([[3., 1., 2.], [1., 2., 0.]])),
        dict(timesteps=[0, 900], negative_types=['kinds_swapped', 'size_changed'],
             logits=torch.tensor([[1., 2., 0.], [1., 1., 0.]])),  # a tie is a miss
    ]
    metric.process({}, samples)
    assert metric.compute_metrics(metric.results) == {
        'count': 2,
        't0/all': 50., 't0/kinds_swapped': 50., 't0/kind_changed': 100., 't0/size_changed': 100.,
        't900/all': 0., 't900/kinds_swapped': 0., 't900/kind_changed': 100., 't900/size_changed': 100.}
    with pytest.raises(ValueError, match=r'logits must have shape \(timesteps, 1 \+ negatives\) = '
                                         r'\(2, 3\), got \(2, 2\)'):
        metric.process({}, [dict(samples[0], logits=torch.zeros(2, 2))])


# ----------------------------------------------------------------- config --
def test_config_builds_a_clip_within_the_size_budget():
    cfg = Config.fromfile(CONFIG)
    model = MODELS.build(cfg.model)
    assert isinstance(model, NoisedCLIPModel) and model.eval_timesteps == [0, 250, 500, 750, 900]
    assert model.clip.text_encoder.token_embedding.num_embeddings == 49408
    fp16_bytes = 2 * sum(v.numel() for v in model.state_dict().values())
    assert fp16_bytes < 10e6
    train = cfg.train_dataloader.dataset
    assert train.split == 'train' and cfg.test_dataloader.dataset.split == 'held_out'
    assert train.pipeline == [dict(type='HardNegativeCaptions', num=6, seed=0)]


def test_one_training_iteration_through_train_py(tmp_path):
    opts = ['train_cfg.max_iters=1', 'train_dataloader.batch_size=4',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
            'model.clip.text_encoder.width=16',
            'model.clip.text_encoder.layers=1', 'model.clip.image_encoder.width=16',
            'model.clip.image_encoder.layers=1', 'model.clip.embed_dim=16']
    env = dict(__import__('os').environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), CONFIG, '--work-dir',
                        'wd', '--cfg-options', *opts], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'loss_image' in r.stdout + r.stderr
    ckpt = torch.load(tmp_path / 'wd' / 'iter_1.pth', weights_only=False)
    assert ckpt['meta']['iter'] == 1
    assert ckpt['state_dict']['clip.text_encoder.token_embedding.weight'].shape == (49408, 16)


# -------------------------------------------------------- bundled weights --
WEIGHTS_DIR = osp.join(REPO, 'projects', 'glide', 'weights')
WEIGHTS = osp.join(WEIGHTS_DIR, 'glide_clip_tiny_shapes-64x64.pth')


def test_bundled_weights_fit_the_config_and_the_size_budget():
    assert osp.getsize(WEIGHTS) < 10e6
    assert sum(osp.getsize(osp.join(WEIGHTS_DIR, f)) for f in os.listdir(WEIGHTS_DIR)) <= 40e6
    model = MODELS.build(Config.fromfile(CONFIG).model).eval()
    load_checkpoint(model, WEIGHTS, map_location='cpu')  # strict: the model checks keys and shapes
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ds = ShapesDataset('held_out', size=64, seed=1,
                       pipeline=[dict(type='HardNegativeCaptions', num=6, seed=1)])
    metric = CLIPRetrievalAccuracy()
    metric.process({}, model.predict(collate_hard_negatives([ds[i] for i in range(64)])))
    scores = metric.compute_metrics(metric.results)
    # clean images, first 64 held-out scenes: colours, background and size are
    # read; the kinds are bound to their shapes above chance (50)
    assert scores['count'] == 64
    assert min(scores[f't0/{k}'] for k in ('color_changed', 'background_changed')) >= 98
    assert scores['t0/size_changed'] >= 90 and scores['t0/kinds_swapped'] >= 60
