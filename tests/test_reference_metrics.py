"""Tests of the offline CLIP-score and FID metrics with tiny random nets."""
import json

import numpy as np
import pytest
import torch
from mmengine.structures import BaseDataElement

from projects.glide.evaluation.clip_score import GlideCLIPScore
from projects.glide.evaluation.fid import GlideFID, feature_statistics, frechet_distance, frechet_distance_low_rank

PROMPTS = ['a red circle', 'a blue square on the left', 'two green triangles',
           'a yellow background', 'a small purple square', 'a red circle']


def _images(seed, n=6, size=32):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, size, size), generator=g,
                      dtype=torch.uint8) for _ in range(n)
    ]


def _bytes_to_unicode():
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(
        ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    d = tmp_path_factory.mktemp('tiny-clip')
    chars = _bytes_to_unicode()
    tokens = chars + [c + '</w>' for c in chars]
    tokens += ['<|startoftext|>', '<|endoftext|>']
    (d / 'vocab.json').write_text(
        json.dumps({t: i
                    for i, t in enumerate(tokens)}))
    (d / 'merges.txt').write_text('#version: 0.2\nr e\nre d</w>\n')
    tokenizer = CLIPTokenizer(str(d / 'vocab.json'), str(d / 'merges.txt'))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokens),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    CLIPImageProcessor(
        size={'shortest_edge': 32},
        crop_size={'height': 32, 'width': 32}).save_pretrained(d)
    return str(d)


@pytest.fixture(scope='module')
def clip_metric(clip_dir):
    return GlideCLIPScore(clip_path=clip_dir, batch_size=4)


def _run(metric, samples, batch):
    metric.results.clear()
    for i in range(0, len(samples), batch):
        metric.process(None, samples[i:i + batch])
    return metric.compute_metrics(metric.results)


def test_clip_score_offline(clip_metric, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    images = _images(1, n=5, size=40) + _images(1, n=1)  # 40x40 is cropped
    samples = [dict(prompt=p, image=im) for p, im in zip(PROMPTS, images)]
    samples[5]['image'] = samples[0]['image'].clone()  # same pair as item 0
    samples[2] = BaseDataElement(prompt=PROMPTS[2], image=images[2])
    metrics = _run(clip_metric, samples, batch=6)
    scores = [r['score'] for r in clip_metric.results]
    assert metrics['count'] == 6
    assert np.isfinite(scores).all()
    assert all(-100 <= s <= 100 for s in scores)
    assert len(set(np.round(scores, 6))) > 1
    # the same pair scores the same; float32 CLIP in another batch slot may differ in the 7th digit
    assert scores[5] == pytest.approx(scores[0], abs=1e-5)
    assert metrics['score'] == pytest.approx(np.mean(scores))
    # batching and order do not change the result
    for batch in (1, 4):
        assert _run(clip_metric, samples, batch)['score'] == pytest.approx(
            metrics['score'], abs=1e-4)
    assert _run(clip_metric, samples[::-1], 3)['score'] == pytest.approx(
        metrics['score'], abs=1e-4)
    # prefix and registry
    from mmagic.registry import METRICS
    m = METRICS.build(dict(type='GlideCLIPScore', clip_path=clip_metric.
                           clip_path))
    assert m.prefix == 'clip'
    m.process(None, samples[:2])
    out = m.evaluate(2)
    assert set(out) == {'clip/score', 'clip/count'}
    assert out['clip/count'] == 2


def test_clip_score_errors(tmp_path, clip_dir):
    with pytest.raises(ValueError, match='clip_path=/path/to/clip.*nothing '
                       'is downloaded'):
        GlideCLIPScore()
    with pytest.raises(FileNotFoundError, match='does not exist.*clip_path='):
        GlideCLIPScore(clip_path=str(tmp_path / 'missing'))
    with pytest.raises(ValueError, match='no config.json'):
        GlideCLIPScore(clip_path=str(tmp_path))
    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'gpt2'}))
    with pytest.raises(ValueError, match="'gpt2' model, not a CLIP"):
        GlideCLIPScore(clip_path=str(tmp_path))
    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'clip'}))
    with pytest.raises(ValueError, match='cannot load a CLIPModel'):
        GlideCLIPScore(clip_path=str(tmp_path))


# ---------------------------------------------------------------- FID
@pytest.fixture(scope='module')
def inception_file(tmp_path_factory):
    from torchvision.models import inception_v3
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=True)
    # calibrate the batch-norm statistics on one batch, else the features of
    # a random net blow up to ~1e10 and FID loses its precision
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 299, 299))
    path = tmp_path_factory.mktemp('inception') / 'inception_v3.pth'
    torch.save(net.state_dict(), path)
    return str(path)


def _save_images(folder, images):
    from PIL import Image
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f'{i}.png')
    return str(folder)


def _smooth(seed, n=6, size=32, offset=0):
    """Images with spatial structure (random-net features of pure noise are
    all alike)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 200 + offset
    up = torch.nn.functional.interpolate(low, size=size, mode='bilinear')
    return [im.clamp(0, 255).round().to(torch.uint8) for im in up]


@pytest.fixture(scope='module')
def fid_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('fid-sets')
    a = _smooth(1)
    b = _smooth(2, offset=50)
    return a, b, _save_images(root / 'a', a), _save_images(root / 'b', b)


def _fid(metric, images, batch=4):
    metric.results.clear()
    for i in range(0, len(images), batch):
        metric.process(None, [dict(image=im) for im in images[i:i + batch]])
    return metric.compute_metrics(metric.results)


def test_fid(inception_file, fid_sets, tmp_path):
    a, b, dir_a, dir_b = fid_sets
    ref_a = GlideFID(inception_path=inception_file, reference_dir=dir_a,
                     batch_size=4)
    ref_b = GlideFID(inception_path=inception_file, reference_dir=dir_b,
                     batch_size=4)
    assert ref_a.inception.kind == 'torchvision'
    same = _fid(ref_a, a)
    ab = _fid(ref_a, b)
    ba = _fid(ref_b, a)
    assert same['count'] == 6 and same['reference_count'] == 6
    assert same['feature_dim'] == 2048 and same['biased'] == 1
    assert ab['fid'] > 0 and np.isfinite(ab['fid'])
    assert abs(same['fid']) < 1e-6 * ab['fid']
    assert ba['fid'] == pytest.approx(ab['fid'], rel=1e-3)
    # the batch size does not matter
    assert _fid(ref_a, b, batch=6)['fid'] == pytest.approx(ab['fid'],
                                                           rel=1e-4)
    # precomputed statistics give the same numbers
    stats = tmp_path / 'a.npz'
    ref_a.save_reference_stats(str(stats))
    from mmagic.registry import METRICS
    from_stats = METRICS.build(
        dict(type='GlideFID', inception_path=inception_file,
             reference_stats=str(stats)))
    assert from_stats.prefix == 'fid'
    assert _fid(from_stats, b)['fid'] == pytest.approx(ab['fid'], rel=1e-4)
    for im in b:
        from_stats.process(None, [BaseDataElement(image=im)])
    out = from_stats.evaluate(6)
    assert out['fid/fid'] == pytest.approx(ab['fid'], rel=1e-4)
    assert out['fid/count'] == 6 and out['fid/biased'] == 1


def test_low_rank_matches_full_sqrtm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 40))
    y = rng.standard_normal((30, 40)) * 1.5 + 0.3
    mu2, s2 = feature_statistics(y)
    full = frechet_distance(*feature_statistics(x), mu2, s2)
    assert frechet_distance_low_rank(x, mu2, s2) == pytest.approx(
        full, rel=1e-6)
    assert frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0, abs=1e-6)


def test_pytorch_fid_layout(tmp_path, fid_sets):
    """A pt_inception-style state_dict (1008 classes, no AuxLogits) loads."""
    from projects.glide.evaluation.inception import InceptionFeatures, _build_pytorch_fid_inception
    torch.manual_seed(0)
    path = tmp_path / 'pt_inception.pth'
    torch.save(_build_pytorch_fid_inception().state_dict(), path)
    net = InceptionFeatures(str(path))
    assert net.kind == 'pytorch-fid'
    feats = net(torch.stack(fid_sets[0][:2]).float())
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


def test_fid_errors(tmp_path, inception_file, fid_sets):
    dir_a = fid_sets[2]
    with pytest.raises(ValueError, match='inception_path=/path/to/file'):
        GlideFID(reference_dir=dir_a)
    with pytest.raises(FileNotFoundError, match='missing.*nothing is '
                       'downloaded'):
        GlideFID(inception_path=str(tmp_path / 'none.pth'),
                 reference_dir=dir_a)
    bad = tmp_path / 'bad.pth'
    torch.save({'weight': torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match='not an Inception-v3'):
        GlideFID(inception_path=str(bad), reference_dir=dir_a)
    (tmp_path / 'junk.pth').write_text('not a checkpoint')
    with pytest.raises(ValueError, match='neither TorchScript'):
        GlideFID(inception_path=str(tmp_path / 'junk.pth'),
                 reference_dir=dir_a)
    with pytest.raises(ValueError, match='reference_dir=/path/to/images'):
        GlideFID(inception_path=inception_file)
    with pytest.raises(ValueError, match='only one'):
        GlideFID(inception_path=inception_file, reference_dir=dir_a,
                 reference_stats='x.npz')
    with pytest.raises(FileNotFoundError, match='not a folder'):
        GlideFID(inception_path=inception_file,
                 reference_dir=str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='fewer than 2 images'):
        GlideFID(inception_path=inception_file,
                 reference_dir=str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        GlideFID(inception_path=inception_file,
                 reference_stats=str(tmp_path / 'none.npz'))
    np.savez(tmp_path / 'wrong.npz', mean=np.zeros(3))
    with pytest.raises(ValueError, match='mu and sigma'):
        GlideFID(inception_path=inception_file,
                 reference_stats=str(tmp_path / 'wrong.npz'))
