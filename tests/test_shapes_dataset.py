"""Tests of the shapes world: scenes, captions, renderer and dataset."""
import json

import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate, pseudo_collate

from projects.glide.datasets.shapes import (COLORS, HELD_OUT_PAIRS, KINDS,
                                            MARGIN, MIN_GAP, PALETTE,
                                            SIZE_EXTENTS, Scene, Shape,
                                            ShapesDataset, caption,
                                            is_held_out, make_prompt_set,
                                            parse_caption, render_kind_mask,
                                            render_scene, render_shape_boxes, render_shape_masks,
                                            sample_scene, scene_from_caption,
                                            shape_word_positions, write_prompt_file)


@pytest.fixture(scope='module')
def tokenizer():
    from projects.glide.models import GlideTokenizer
    return GlideTokenizer()


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, R, R) in [-1, 1] -> uint8 (R, R, 3)."""
    return ((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(
        np.uint8)


def single(kind, color, background, center=(0.5, 0.5), extent=0.44,
           size='large', position='center'):
    return Scene(background,
                 [Shape(kind, color, size, position, center, extent)])


def test_palette_is_css_named_colours():
    assert PALETTE == {
        'red': (255, 0, 0),
        'green': (0, 128, 0),
        'blue': (0, 0, 255),
        'yellow': (255, 255, 0),
        'purple': (128, 0, 128),
        'orange': (255, 165, 0),
        'white': (255, 255, 255),
        'black': (0, 0, 0),
    }
    assert KINDS == ('circle', 'square', 'triangle')


@pytest.mark.parametrize('resolution', [64, 256])
@pytest.mark.parametrize('kind,area', [('circle', np.pi / 4), ('square', 1.0),
                                       ('triangle', 0.5)])
def test_render_exact_colours_and_area(resolution, kind, area):
    scene = single(kind, 'purple', 'orange')
    img = np.round(render_scene(scene, resolution) * 255).astype(np.uint8)
    assert img.shape == (resolution, resolution, 3)
    c = resolution // 2
    assert tuple(img[c, c]) == (128, 0, 128)
    for y, x in [(0, 0), (0, -1), (-1, 0), (-1, -1), (c, 0), (0, c)]:
        assert tuple(img[y, x]) == (255, 165, 0)
    covered = (render_scene(scene, resolution)[..., 2] * 255 / 128).mean()
    assert covered == pytest.approx(area * 0.44**2, rel=0.01)


def test_triangle_is_upright():
    img = render_scene(single('triangle', 'white', 'black'), 64)[..., 0]
    widths = (img > 0.5).sum(1)
    rows = np.nonzero(widths)[0]
    top, bottom = widths[rows[:5]].mean(), widths[rows[-5:]].mean()
    assert bottom > 3 * top
    assert len(rows) == pytest.approx(0.44 * 64, abs=1.5)


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


def test_kind_mask_marks_the_pixels_that_depend_on_the_kind():
    # a large shape in the middle: box 0.28..0.72, i.e. pixels 18..45 at 64
    coverage = {k: render_scene(single(k, 'white', 'black'), 64)[..., 0] for k in KINDS}
    for kind in KINDS:  # the same for every kind: only the box matters
        mask = render_kind_mask(single(kind, 'white', 'black'), 64)
        assert mask.dtype == np.float32 and mask.shape == (64, 64)
        stack = np.stack(list(coverage.values()))
        np.testing.assert_allclose(mask, stack.max(0) - stack.min(0), atol=1e-6)
    assert mask[19, 19] == 1 and mask[19, 44] == 1  # the box's top corners: only a square there
    assert mask[40, 32] == 0  # low in the middle: inside every kind
    assert mask[:16].max() == 0 and mask[:, 48:].max() == 0  # away from the shape
    # two shapes: the maximum of their masks; crops cut it like the image
    scene = Scene('red', [Shape('circle', 'blue', 'small', None, (0.25, 0.3), 0.2),
                          Shape('triangle', 'green', 'small', None, (0.7, 0.7), 0.2)], 'above')
    both = render_kind_mask(scene, 64)
    one = [render_kind_mask(Scene('red', [s]), 64) for s in scene.shapes]
    np.testing.assert_array_equal(both, np.maximum(*one))
    item = ShapesDataset('train', seed=5, kind_mask=True)[0]
    assert item['kind_mask'].shape == (1, 64, 64) and item['kind_mask'].dtype == torch.float32
    np.testing.assert_array_equal(
        item['kind_mask'][0].numpy(), render_kind_mask(Scene.from_dict(item['scene']), 64))
    assert torch.equal(item['img'], ShapesDataset('train', seed=5)[0]['img'])
    crops = ShapesDataset('train', seed=5, resolution=256, low_res=64, crop=128, kind_mask=True)
    whole = ShapesDataset('train', seed=5, resolution=256, kind_mask=True)[1]['kind_mask']
    top, left = crops[1]['crop_yx']
    assert torch.equal(crops[1]['kind_mask'], whole[:, top:top + 128, left:left + 128])
    with pytest.raises(ValueError, match='scene has no layout; call realize_scene first'):
        render_kind_mask(parse_caption('a red circle on a blue background'), 64)


def test_shape_masks_cover_each_shape_and_nothing_else():
    scene = Scene('red', [Shape('circle', 'blue', 'small', None, (0.25, 0.3), 0.2),
                          Shape('triangle', 'green', 'small', None, (0.7, 0.7), 0.2)], 'above')
    masks = render_shape_masks(scene, 64)
    assert masks.dtype == np.float32 and masks.shape == (2, 64, 64)
    assert masks[0, 19, 16] == 1 and masks[1, 19, 16] == 0  # the circle's centre
    assert masks[1, 48, 45] == 1 and masks[0, 48, 45] == 0  # low in the triangle
    # where the image has a shape's colour, that shape's mask is its coverage
    img = render_scene(scene, 64).astype(np.float64)  # blue (0, 0, 1) and green (0, 0.5, 0) on red (1, 0, 0)
    np.testing.assert_allclose(masks[0], img[..., 2], atol=1e-6)
    np.testing.assert_allclose(masks[1], img[..., 1] / (128 / 255), atol=1e-6)
    one = render_shape_masks(single('square', 'white', 'black'), 32)
    assert one[0].sum() == pytest.approx((0.44 * 32) ** 2, rel=1e-3) and not one[1].any()
    with pytest.raises(ValueError, match='scene has no layout; call realize_scene first'):
        render_shape_masks(parse_caption('a red circle on a blue background'), 64)


def test_shape_boxes_hold_every_pixel_that_a_kind_decides():
    scene = Scene('red', [Shape('circle', 'blue', 'small', None, (0.25, 0.3), 0.2),
                          Shape('triangle', 'green', 'small', None, (0.7, 0.7), 0.2)], 'above')
    boxes, masks = render_shape_boxes(scene, 64), render_shape_masks(scene, 64)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 64, 64)
    # each box is the square of the shape's centre and extent: 0.15..0.35 x 0.2..0.4 for the circle
    assert boxes[0, 13:25, 10:22].min() == 1 and boxes[0].sum() == pytest.approx((0.2 * 64) ** 2, rel=1e-3)
    assert boxes[0, 13, 10] == 1 and masks[0, 13, 10] == 0  # a corner off the circle
    assert not boxes[1, :32].any() and not boxes[0, 32:].any()  # each box holds its own shape only
    # the box holds the shape and every pixel whose colour depends on its kind
    for i, s in enumerate(scene.shapes):
        assert (boxes[i] >= masks[i] - 1e-6).all()
        assert (boxes[i] >= render_kind_mask(Scene('red', [s]), 64) - 1e-6).all()
    assert not render_shape_boxes(single('circle', 'white', 'black'), 32)[1].any()
    with pytest.raises(ValueError, match='scene has no layout; call realize_scene first'):
        render_shape_boxes(parse_caption('a red circle on a blue background'), 64)


@pytest.mark.parametrize('prompt, words', [
    ('a small blue circle above a small green triangle on a red background', (2, 3, 7, 8)),
    ('Red Background With A Blue Circle Above A Green Triangle!', (4, 5, 8, 9)),
    ('a blue circle above a green circle, red background', (1, 2, 5, 6)),
])
def test_shape_word_positions_find_each_shapes_colour_and_kind(tokenizer, prompt, words):
    """Rows are the scene's shapes in order, columns their colour and kind;
    a kind named twice is found once for each shape."""
    kind = 'circle' if 'green circle' in prompt else 'triangle'
    scene = Scene('red', [Shape('circle', 'blue'), Shape(kind, 'green')], 'above')
    positions = shape_word_positions(tokenizer, prompt, scene)
    assert positions.dtype == np.int64 and positions.tolist() == [list(words[:2]), list(words[2:])]
    ids = tokenizer.encode(prompt)
    assert [ids[p] for p in words] == [tokenizer.encode(' ' + w)[0] for w in ('blue', 'circle', 'green', kind)]
    one = shape_word_positions(tokenizer, 'on the left, a big Purple Square.', single('square', 'purple', 'red'))
    assert one.tolist() == [[6, 7], [-1, -1]]
    with pytest.raises(ValueError, match=r"'green' of shape 2 is not in the prompt 'a blue circle above a "
                                         r"circle' after the words before it"):
        shape_word_positions(tokenizer, 'a blue circle above a circle', scene)


def test_grounding_items_hold_the_shape_masks_and_word_positions(tokenizer):
    data = ShapesDataset('train', seed=5, grounding=True, two_shape_prob=0.5)
    plain = ShapesDataset('train', seed=5, two_shape_prob=0.5)
    for i in range(6):
        item = data[i]
        scene, prompt = data.get_scene(i)
        assert item['grounding_masks'].dtype == torch.float32 and item['grounding_masks'].shape == (2, 64, 64)
        np.testing.assert_array_equal(item['grounding_masks'].numpy(), render_shape_masks(scene, 64))
        assert item['grounding_tokens'].dtype == torch.int64
        assert item['grounding_tokens'].tolist() == shape_word_positions(tokenizer, prompt, scene).tolist()
        assert torch.equal(item['img'], plain[i]['img']) and item['prompt'] == plain[i]['prompt']
    assert {len(data.get_scene(i)[0].shapes) for i in range(6)} == {1, 2}
    crops = ShapesDataset('train', seed=5, resolution=256, low_res=64, crop=128, grounding=True)
    whole = ShapesDataset('train', seed=5, resolution=256, grounding=True)[1]['grounding_masks']
    top, left = crops[1]['crop_yx']
    assert torch.equal(crops[1]['grounding_masks'], whole[:, top:top + 128, left:left + 128])
    batch = default_collate([data[0], data[1]])
    assert batch['grounding_masks'].shape == (2, 2, 64, 64) and batch['grounding_tokens'].shape == (2, 2, 2)


def test_grounding_on_boxes_gives_the_kind_word_its_shapes_box():
    data = ShapesDataset('train', seed=5, grounding=True, grounding_kind_region='box', two_shape_prob=0.5)
    shape_only = ShapesDataset('train', seed=5, grounding=True, two_shape_prob=0.5)
    for i in range(4):
        masks = data[i]['grounding_masks']
        scene = data.get_scene(i)[0]
        assert masks.dtype == torch.float32 and masks.shape == (2, 2, 64, 64)  # [shape, (colour, kind)]
        assert torch.equal(masks[:, 0], shape_only[i]['grounding_masks'])
        np.testing.assert_array_equal(masks[:, 1].numpy(), render_shape_boxes(scene, 64))
        assert torch.equal(data[i]['grounding_tokens'], shape_only[i]['grounding_tokens'])
    crops = ShapesDataset('train', seed=5, resolution=256, low_res=64, crop=128, grounding=True,
                          grounding_kind_region='box')
    whole = ShapesDataset('train', seed=5, resolution=256, grounding=True, grounding_kind_region='box')
    top, left = crops[1]['crop_yx']
    assert crops[1]['grounding_masks'].shape == (2, 2, 128, 128)
    assert torch.equal(crops[1]['grounding_masks'], whole[1]['grounding_masks'][..., top:top + 128, left:left + 128])
    with pytest.raises(ValueError, match="grounding_kind_region must be 'shape' or 'box', got 'boxes'"):
        ShapesDataset(grounding=True, grounding_kind_region='boxes')
    with pytest.raises(ValueError, match="grounding_kind_region='box' needs grounding=True"):
        ShapesDataset(grounding_kind_region='box')


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


@pytest.mark.parametrize('background,shapes,expected', [
    ('blue', [('green', 'triangle')], True),
    ('blue', [('purple', 'circle')], True),
    ('blue', [('orange', 'square')], True),
    ('blue', [('white', 'triangle')], True),
    ('black', [('yellow', 'circle')], True),
    ('black', [('red', 'circle'), ('yellow', 'square')], True),
    ('red', [('blue', 'circle'), ('green', 'triangle')], True),
    ('blue', [('green', 'circle')], False),
    ('blue', [('orange', 'circle')], False),
    ('white', [('yellow', 'triangle')], False),
    ('black', [('white', 'square'), ('purple', 'triangle')], False),
])
def test_is_held_out(background, shapes, expected):
    relation = 'above' if len(shapes) == 2 else None
    scene = Scene(background, [Shape(k, c) for c, k in shapes], relation)
    assert is_held_out(scene) is expected


def test_splits_respect_held_out_rules():
    pairs, yellow_on_black = set(), False
    for split in ('train', 'seen'):
        ds = ShapesDataset(split, seed=11)
        for i in range(2000):
            scene, _ = ds.get_scene(i)
            assert not is_held_out(scene)
            pairs |= {(s.color, s.kind) for s in scene.shapes}
    all_pairs = {(c, k) for c in COLORS for k in KINDS}
    assert pairs == all_pairs - HELD_OUT_PAIRS
    held = ShapesDataset('held_out', seed=11)
    pairs = set()
    for i in range(1000):
        scene, _ = held.get_scene(i)
        assert is_held_out(scene)
        pairs |= {(s.color, s.kind) for s in scene.shapes}
        yellow_on_black |= scene.background == 'black' and any(
            s.color == 'yellow' for s in scene.shapes)
    assert HELD_OUT_PAIRS <= pairs and yellow_on_black
    assert all(held[i]['held_out'] for i in range(3))
    assert not any(ShapesDataset()[i]['held_out'] for i in range(3))


def test_layout_conventions():
    rng = np.random.default_rng(0)
    n_two = 0
    for _ in range(2000):
        scene = sample_scene(rng, 'train')
        for s in scene.shapes:
            lo, hi = SIZE_EXTENTS[s.size]
            assert lo <= s.extent <= hi
            assert s.color != scene.background
            for c in s.center:
                assert MARGIN - 1e-9 <= c - s.extent / 2
                assert c + s.extent / 2 <= 1 - MARGIN + 1e-9
        if scene.relation is None:
            (x, y), pos = scene.shapes[0].center, scene.shapes[0].position
            ax, ay = {'left': (x, y), 'right': (1 - x, y),
                      'top': (y, x), 'bottom': (1 - y, x),
                      'center': (None, None)}[pos]
            if pos == 'center':
                assert abs(x - 0.5) <= 0.06 and abs(y - 0.5) <= 0.06
            else:
                assert ax <= 1 / 3 - 0.03 and abs(ay - 0.5) <= 0.06
            continue
        n_two += 1
        a, b = scene.shapes
        assert (a.kind, a.color) != (b.kind, b.color)
        axis = 1 if scene.relation in ('above', 'below') else 0
        first, second = (a, b) if scene.relation in (
            'above', 'to the left of') else (b, a)
        gap = (second.center[axis] - second.extent / 2) - (
            first.center[axis] + first.extent / 2)
        assert gap >= MIN_GAP - 1e-9
        assert abs(a.center[1 - axis] - b.center[1 - axis]) <= 0.1 + 1e-9
    assert 600 < n_two < 1000


def test_caption_round_trip():
    rng = np.random.default_rng(42)
    captions, unstated_size, unstated_position = set(), 0, 0
    for i in range(4000):
        scene = sample_scene(rng, 'held_out' if i % 4 == 0 else 'train')
        text = caption(scene, rng)
        captions.add(text)
        for spec in (parse_caption(text), parse_caption(caption(scene))):
            assert spec.background == scene.background, text
            assert spec.relation == scene.relation, text
            assert [(s.kind, s.color) for s in spec.shapes] == [
                (s.kind, s.color) for s in scene.shapes], text
            for p, s in zip(spec.shapes, scene.shapes):
                assert p.size in (None, s.size), text
                assert p.position in (None, s.position), text
                unstated_size += p.size is None
                unstated_position += p.position is None and (
                    scene.relation is None)
    assert len(captions) > 3500
    assert unstated_size > 1000 and unstated_position > 500
    canonical = parse_caption(caption(scene))
    assert all(s.size is not None for s in canonical.shapes)


def test_parse_caption_is_robust():
    spec = parse_caption(
        '  A   Small YELLOW triangle , on the LEFT;  white background!! ')
    assert spec == Scene('white', [Shape('triangle', 'yellow', 'small',
                                         'left')])
    spec = parse_caption('Green background with a big Blue Square.')
    assert spec == Scene('green', [Shape('square', 'blue', 'large')])
    spec = parse_caption('an orange circle left of a little black triangle, '
                         'white background')
    assert spec.relation == 'to the left of'
    assert spec.shapes == [Shape('circle', 'orange'),
                           Shape('triangle', 'black', 'small')]
    assert parse_caption('a red circle under a blue square on a white '
                         'background').relation == 'below'


@pytest.mark.parametrize('text,message', [
    ('', 'empty caption'),
    ('a red circle', 'no background'),
    ('a red circle on a grey background', "unknown background colour 'grey'"),
    ('a pink circle on a blue background', "unknown colour or size 'pink'"),
    ('a red star on a blue background', "unknown shape 'star'"),
    ('a circle on a blue background', 'no colour for the circle'),
    ('a blue circle on a blue background', "background colour 'blue'"),
    ('a red circle and a blue square on a white background',
     'two shapes need a relation'),
    ('a red circle on the left above a blue square on a white background',
     'position cannot be combined with a relation'),
    ('a red circle at the top on the left, white background',
     'more than one position'),
    ('a red circle on a blue background on a white background',
     'more than one background'),
])
def test_parse_caption_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_scene_from_caption_samples_unstated_attributes():
    rng = np.random.default_rng(0)
    sizes, positions = set(), set()
    for _ in range(100):
        scene = scene_from_caption('a red circle on a blue background', rng)
        assert scene.is_concrete and scene.shapes[0].color == 'red'
        sizes.add(scene.shapes[0].size)
        positions.add(scene.shapes[0].position)
    assert sizes == {'small', 'large'} and len(positions) == 5
    scene = scene_from_caption('a small red square at the bottom, '
                               'blue background', rng)
    assert scene.shapes[0].size == 'small'
    assert scene.shapes[0].center[1] >= 2 / 3


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


def test_kind_neutral_render_is_the_mean_of_the_three_kinds():
    """With one shape the kind-neutral render is the mean of the renders of
    the shape as each kind (compositing is linear in the coverage); it has
    the layout and colours but is none of the kinds."""
    from dataclasses import replace

    from projects.glide.datasets.shapes import KINDS, render_scene, sample_scene
    scene = sample_scene(np.random.default_rng(3), 'seen', two_shape_prob=0.0)
    neutral = render_scene(scene, 64, kind_neutral=True)
    renders = [render_scene(replace(scene, shapes=[replace(scene.shapes[0], kind=k)]), 64) for k in KINDS]
    assert neutral.shape == (64, 64, 3) and neutral.dtype == np.float32
    np.testing.assert_allclose(neutral, np.mean(renders, 0), atol=1e-6)
    assert min(np.abs(neutral - r).max() for r in renders) > 0.2
