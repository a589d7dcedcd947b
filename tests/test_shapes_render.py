"""Tests of the shapes world's rasteriser."""
import numpy as np
import pytest

from projects.glide.datasets.shapes import Scene, Shape, render_scene


def single(kind, color, background, center=(0.5, 0.5), extent=0.44,
           size='large', position='center'):
    return Scene(background,
                 [Shape(kind, color, size, position, center, extent)])


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
