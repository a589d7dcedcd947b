"""Tests of the shapes world's scenes: palette, held-out rules and layout."""
import numpy as np
import pytest

from projects.glide.datasets.shapes import (
    COLORS,
    HELD_OUT_PAIRS,
    KINDS,
    MARGIN,
    MIN_GAP,
    PALETTE,
    SIZE_EXTENTS,
    Scene,
    Shape,
    ShapesDataset,
    is_held_out,
    sample_scene,
)


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
