"""Tests of the research targets of shapes scenes and their pipeline transforms."""
import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate

from projects.glide.datasets.shapes import KINDS, Scene, Shape, ShapesDataset, caption, parse_caption, render_scene
from projects.glide.research.transforms import (
    render_kind_mask,
    render_kind_neutral,
    render_shape_boxes,
    render_shape_masks,
    shape_word_positions,
)

KIND_MASK = [dict(type='KindMask')]


def grounding(**kwargs):
    return [dict(type='ShapeGroundingTargets', **kwargs)]


@pytest.fixture(scope='module')
def tokenizer():
    from projects.glide.models import GlideTokenizer
    return GlideTokenizer()


def single(kind, color, background, center=(0.5, 0.5), extent=0.44,
           size='large', position='center'):
    return Scene(background,
                 [Shape(kind, color, size, position, center, extent)])


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
    item = ShapesDataset('train', seed=5, pipeline=KIND_MASK)[0]
    assert item['kind_mask'].shape == (1, 64, 64) and item['kind_mask'].dtype == torch.float32
    np.testing.assert_array_equal(
        item['kind_mask'][0].numpy(), render_kind_mask(Scene.from_dict(item['scene']), 64))
    assert torch.equal(item['img'], ShapesDataset('train', seed=5)[0]['img'])
    crops = ShapesDataset('train', seed=5, resolution=256, low_res=64, crop=128, pipeline=KIND_MASK)
    whole = ShapesDataset('train', seed=5, resolution=256, pipeline=KIND_MASK)[1]['kind_mask']
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
    data = ShapesDataset('train', seed=5, pipeline=grounding(), two_shape_prob=0.5)
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
    crops = ShapesDataset('train', seed=5, resolution=256, low_res=64, crop=128, pipeline=grounding())
    whole = ShapesDataset('train', seed=5, resolution=256, pipeline=grounding())[1]['grounding_masks']
    top, left = crops[1]['crop_yx']
    assert torch.equal(crops[1]['grounding_masks'], whole[:, top:top + 128, left:left + 128])
    batch = default_collate([data[0], data[1]])
    assert batch['grounding_masks'].shape == (2, 2, 64, 64) and batch['grounding_tokens'].shape == (2, 2, 2)


def test_grounding_on_boxes_gives_the_kind_word_its_shapes_box():
    data = ShapesDataset('train', seed=5, pipeline=grounding(kind_region='box'), two_shape_prob=0.5)
    shape_only = ShapesDataset('train', seed=5, pipeline=grounding(), two_shape_prob=0.5)
    for i in range(4):
        masks = data[i]['grounding_masks']
        scene = data.get_scene(i)[0]
        assert masks.dtype == torch.float32 and masks.shape == (2, 2, 64, 64)  # [shape, (colour, kind)]
        assert torch.equal(masks[:, 0], shape_only[i]['grounding_masks'])
        np.testing.assert_array_equal(masks[:, 1].numpy(), render_shape_boxes(scene, 64))
        assert torch.equal(data[i]['grounding_tokens'], shape_only[i]['grounding_tokens'])
    crops = ShapesDataset('train', seed=5, resolution=256, low_res=64, crop=128,
                          pipeline=grounding(kind_region='box'))
    whole = ShapesDataset('train', seed=5, resolution=256, pipeline=grounding(kind_region='box'))
    top, left = crops[1]['crop_yx']
    assert crops[1]['grounding_masks'].shape == (2, 2, 128, 128)
    assert torch.equal(crops[1]['grounding_masks'], whole[1]['grounding_masks'][..., top:top + 128, left:left + 128])
    with pytest.raises(ValueError, match="kind_region must be 'shape' or 'box', got 'boxes'"):
        ShapesDataset(pipeline=grounding(kind_region='boxes'))


def test_kind_neutral_render_is_the_mean_of_the_three_kinds():
    """With one shape the kind-neutral render is the mean of the renders of
    the shape as each kind (compositing is linear in the coverage); it has
    the layout and colours but is none of the kinds."""
    from dataclasses import replace

    from projects.glide.datasets.shapes import sample_scene
    scene = sample_scene(np.random.default_rng(3), 'seen', two_shape_prob=0.0)
    neutral = render_kind_neutral(scene, 64)
    renders = [render_scene(replace(scene, shapes=[replace(scene.shapes[0], kind=k)]), 64) for k in KINDS]
    assert neutral.shape == (64, 64, 3) and neutral.dtype == np.float32
    np.testing.assert_allclose(neutral, np.mean(renders, 0), atol=1e-6)
    assert min(np.abs(neutral - r).max() for r in renders) > 0.2


def test_transforms_build_from_configs_and_check_their_input():
    from mmagic.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    ds = DATASETS.build(dict(type='ShapesDataset', size=2, seed=5, resolution=32,
                             pipeline=KIND_MASK + grounding(kind_region='box', text_ctx=64)))
    item = ds[1]
    assert item['kind_mask'].shape == (1, 32, 32) and item['grounding_masks'].shape == (2, 2, 32, 32)
    scene = Scene.from_dict(item['scene'])
    np.testing.assert_array_equal(item['kind_mask'][0].numpy(), render_kind_mask(scene, 32))
    scene = Scene('red', [Shape('circle', 'blue', 'small', None, (0.25, 0.3), 0.2),
                          Shape('triangle', 'green', 'small', None, (0.7, 0.7), 0.2)], 'above')
    short = ShapesDataset(pipeline=grounding(text_ctx=4)).pipeline[0]
    with pytest.raises(ValueError, match=r"a shape word of 'a small blue circle above a small green triangle "
                                         r"on a red background' is at token 8, beyond text_ctx=4"):
        short(dict(img=torch.zeros(3, 64, 64), scene=scene.to_dict(), prompt=caption(scene)))
    with pytest.raises(ValueError, match='text_ctx must be a positive int, got 0'):
        ShapesDataset(pipeline=grounding(text_ctx=0))
    with pytest.raises(KeyError, match=r"KindMask needs a ShapesDataset item with scene and img; "
                                       r"missing \['scene'\]"):
        ShapesDataset(pipeline=KIND_MASK).pipeline[0](dict(img=torch.zeros(3, 8, 8)))
