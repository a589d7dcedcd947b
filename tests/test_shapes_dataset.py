"""Tests of ShapesDataset: items, crops, pipelines, determinism, prompt sets."""
import json

import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate, pseudo_collate

from projects.glide.datasets.shapes import (
    PALETTE,
    Scene,
    ShapesDataset,
    is_held_out,
    make_prompt_set,
    parse_caption,
    write_prompt_file,
)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, R, R) in [-1, 1] -> uint8 (R, R, 3)."""
    return ((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(
        np.uint8)


def test_dataset_item_colours_at_shape_centres_and_border():
    ds = ShapesDataset('train', seed=3, resolution=64)
    for i in range(50):
        item = ds[i]
        img = to_uint8(item['img'])
        scene = Scene.from_dict(item['scene'])
        bg = PALETTE[scene.background]
        assert all(tuple(p) == bg for p in img[0]), item['prompt']
        assert all(tuple(p) == bg for p in img[:, -1]), item['prompt']
        for s in scene.shapes:
            x, y = (int(v * 64) for v in s.center)
            assert tuple(img[y, x]) == PALETTE[s.color], item['prompt']


def test_same_scene_at_64_and_256_agrees():
    ds = ShapesDataset('seen', seed=1, resolution=256, low_res=64)
    for i in range(20):
        item = ds[i]
        assert item['low_res'].shape == (3, 64, 64)
        down = torch.nn.functional.avg_pool2d(item['img'][None], 4)[0]
        assert (down - item['low_res']).abs().max() < 1e-4
        assert torch.equal(item['low_res'],
                           ShapesDataset('seen', seed=1)[i]['img'])


def test_crop_windows_match_between_resolutions():
    full = ShapesDataset('train', seed=3, resolution=256, low_res=64)
    crops = ShapesDataset('train', seed=3, resolution=256, low_res=64, crop=128)
    corners = set()
    for i in range(12):
        whole, item = full[i], crops[i]
        top, left = item['crop_yx']
        corners.add((top, left))
        assert top % 4 == 0 and left % 4 == 0 and 0 <= top <= 128 and 0 <= left <= 128
        assert item['img'].shape == (3, 128, 128) and item['low_res'].shape == (3, 32, 32)
        assert torch.equal(item['img'], whole['img'][:, top:top + 128, left:left + 128])
        assert torch.equal(item['low_res'],
                           whole['low_res'][:, top // 4:top // 4 + 32, left // 4:left // 4 + 32])
        assert item['prompt'] == whole['prompt'] and item['scene'] == whole['scene']
        assert crops[i]['crop_yx'] == (top, left)  # deterministic
    assert len(corners) == 12


@pytest.mark.parametrize('kwargs, message', [
    (dict(resolution=256, crop=64), 'crop needs low_res'),
    (dict(resolution=256, low_res=48, crop=64), 'resolution must be a multiple of low_res'),
    (dict(resolution=256, low_res=64, crop=66), 'crop must be a multiple of 4'),
    (dict(resolution=256, low_res=64, crop=512), r'in \[1, 256\], got 512'),
])
def test_crop_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataset(**kwargs)


def test_item_format():
    item = ShapesDataset('held_out', size=5, resolution=32)[2]
    assert set(item) == {'img', 'prompt', 'index', 'held_out', 'scene'}
    img = item['img']
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
    assert img.min() >= -1 and img.max() <= 1
    assert item['index'] == 2 and item['held_out'] is True
    assert isinstance(item['prompt'], str)
    scene = Scene.from_dict(json.loads(json.dumps(item['scene'])))
    assert scene == ShapesDataset('held_out', size=5).get_scene(2)[0]
    assert scene.is_concrete and is_held_out(scene)
    assert len(item['scene']['shapes']) == 2


def test_determinism_and_length():
    a, b = ShapesDataset(seed=5), ShapesDataset(seed=5)
    assert len(a) == 10**9
    for i in (0, 7, 123_456_789):
        x, y = a[i], b[i]
        assert x['prompt'] == y['prompt'] and x['scene'] == y['scene']
        assert torch.equal(x['img'], y['img'])
    other_seed = [ShapesDataset(seed=6).get_scene(i)[1] for i in range(20)]
    other_split = [ShapesDataset('seen', seed=5).get_scene(i)[1]
                   for i in range(20)]
    mine = [a.get_scene(i)[1] for i in range(20)]
    assert mine != other_seed and mine != other_split
    finite = ShapesDataset(size=3, seed=5)
    assert len(finite) == 3
    assert finite[-1]['prompt'] == a[2]['prompt']
    with pytest.raises(IndexError):
        finite[3]
    with pytest.raises(ValueError, match='split'):
        ShapesDataset('test')


def test_items_collate():
    ds = ShapesDataset(resolution=16, low_res=8)
    items = [ds[i] for i in range(16)]
    assert {it['scene']['num_shapes'] for it in items} == {1, 2}
    batch = default_collate(items)
    assert batch['img'].shape == (16, 3, 16, 16)
    assert batch['low_res'].shape == (16, 3, 8, 8)
    assert len(batch['prompt']) == 16
    assert pseudo_collate(items)['prompt'] == [it['prompt'] for it in items]


def test_prompt_set_and_file(tmp_path):
    prompts = make_prompt_set('held_out', 40, seed=3)
    assert prompts == make_prompt_set('held_out', 40, seed=3)
    assert len(set(prompts)) > 30
    assert all(is_held_out(parse_caption(p)) for p in prompts)
    assert not any(
        is_held_out(parse_caption(p)) for p in make_prompt_set('seen', 40))
    path = tmp_path / 'prompts.txt'
    write_prompt_file(str(path), prompts)
    assert path.read_text(encoding='utf-8').splitlines() == prompts


def test_registry_build():
    from mmagic.registry import DATASETS
    ds = DATASETS.build(
        dict(type='ShapesDataset', split='seen', size=3, resolution=32,
             low_res=16, seed=2))
    assert isinstance(ds, ShapesDataset) and len(ds) == 3
    assert ds[0]['low_res'].shape == (3, 16, 16)


def test_pipeline_adds_to_items_before_the_crop():
    """Transforms see the whole item (img at R) and may add anything; the
    crop then cuts every (..., R, R) tensor like img, and nothing else."""
    def add(item):
        item.update(square=item['img'][:1].clone(), vector=torch.arange(64.), note='x')
        return item

    whole = ShapesDataset('train', seed=3, resolution=64, pipeline=[add])[2]
    assert torch.equal(whole['square'], whole['img'][:1]) and whole['note'] == 'x'
    assert list(whole) == ['img', 'prompt', 'index', 'held_out', 'scene', 'square', 'vector', 'note']
    item = ShapesDataset('train', seed=3, resolution=64, low_res=16, crop=32, pipeline=[add])[2]
    top, left = item['crop_yx']
    assert torch.equal(item['square'], whole['square'][:, top:top + 32, left:left + 32])
    assert torch.equal(item['square'], item['img'][:1]) and torch.equal(item['vector'], torch.arange(64.))
    assert item['low_res'].shape == (3, 8, 8)


def test_pipeline_and_removed_argument_errors():
    research = r" \(custom_imports=dict\(imports=\['projects.glide.research'\]\)\)"
    for name, value, use in [
            ('kind_mask', True, r"pipeline=\[dict\(type='KindMask'\)\]"),
            ('grounding', True, r"pipeline=\[dict\(type='ShapeGroundingTargets'\)\]"),
            ('grounding_kind_region', 'box',
             r"pipeline=\[dict\(type='ShapeGroundingTargets', kind_region=\.\.\.\)\]")]:
        with pytest.raises(ValueError, match=f'ShapesDataset no longer takes {name}=; use {use}{research}'):
            ShapesDataset(**{name: value})
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        ShapesDataset(colour='red')
    with pytest.raises(ValueError, match='pipeline must be a list of transforms .* got dict'):
        ShapesDataset(pipeline=dict(type='KindMask'))
    with pytest.raises(ValueError, match=r'pipeline\[1\] must be a dict with a type or a callable, got int'):
        ShapesDataset(pipeline=[lambda item: item, 3])
    with pytest.raises(KeyError, match='NoSuchTransform'):
        ShapesDataset(pipeline=[dict(type='NoSuchTransform')])
    with pytest.raises(TypeError, match='returned NoneType, not the item dict'):
        ShapesDataset(pipeline=[lambda item: None])[0]
