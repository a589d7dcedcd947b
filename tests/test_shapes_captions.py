"""Tests of the shapes world's caption generator and parser."""
import numpy as np
import pytest

from projects.glide.datasets.shapes import Scene, Shape, caption, parse_caption, sample_scene, scene_from_caption


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
