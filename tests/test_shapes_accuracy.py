"""Tests of the pixel-based shapes judge and the ShapesAccuracy metric."""
import dataclasses

import numpy as np
import pytest
import torch
from mmengine.structures import BaseDataElement

from projects.glide.datasets.shapes import COLORS, Scene, Shape, caption, render_scene, sample_scene
from projects.glide.evaluation.shapes_accuracy import ATTRIBUTES, ShapesAccuracy, detect_shapes, judge_image

# "a large red circle above a small blue square on a white background"
PAIR = Scene('white', [
    Shape('circle', 'red', 'large', None, (0.5, 0.3), 0.42),
    Shape('square', 'blue', 'small', None, (0.52, 0.75), 0.24)
], 'above')
# "a small purple triangle on the left on a yellow background"
SINGLE = Scene('yellow',
               [Shape('triangle', 'purple', 'small', 'left', (0.25, 0.5),
                      0.26)])


def to_uint8(scene: Scene, resolution: int) -> np.ndarray:
    return np.round(render_scene(scene, resolution) * 255).astype(np.uint8)


def edit(scene: Scene, index: int = 0, **changes) -> Scene:
    """Copy of ``scene`` with fields of shape ``index`` (or, for key
    ``background``, the background) replaced."""
    shapes = list(scene.shapes)
    background = changes.pop('background', scene.background)
    if changes:
        shapes[index] = dataclasses.replace(shapes[index], **changes)
    return Scene(background, shapes, scene.relation)


def wrong_attributes(judged: dict) -> set:
    return {a for a in ATTRIBUTES if judged[a] is False}


@pytest.mark.parametrize('resolution,n', [(64, 400), (256, 200)])
def test_renderer_images_score_100_percent(resolution, n):
    rng = np.random.default_rng(resolution)
    correct = {a: [] for a in ATTRIBUTES + ('all_correct', )}
    for i in range(n):
        scene = sample_scene(rng, 'held_out' if i % 3 == 0 else 'train')
        judged = judge_image(to_uint8(scene, resolution), caption(scene, rng))
        for a, values in correct.items():
            if judged[a] is not None:
                values.append(judged[a])
    for a, values in correct.items():
        assert len(values) > 50, a
        assert np.mean(values) >= 0.99, a


@pytest.mark.parametrize('resolution', [64, 256])
@pytest.mark.parametrize('scene,text,wrong', [
    (PAIR, None, set()),
    (edit(PAIR, background='green'), None, {'background'}),
    (edit(PAIR, 0, kind='triangle'), None, {'shape_class'}),
    (edit(PAIR, 1, kind='circle'), None, {'shape_class'}),
    (edit(PAIR, 1, color='yellow'), None, {'shape_color'}),
    (edit(PAIR, 0, extent=0.26), None, {'size'}),
    (Scene('white', [dataclasses.replace(PAIR.shapes[0], center=(0.5, 0.7)),
                     dataclasses.replace(PAIR.shapes[1], center=(0.5, 0.2))],
           'above'), None, {'relation'}),
    (PAIR, 'a large red circle to the left of a small blue square on a '
     'white background', {'relation'}),
    (SINGLE, None, set()),
    (edit(SINGLE, center=(0.75, 0.5)), None, {'position'}),
    (edit(SINGLE, center=(0.5, 0.2)), None, {'position'}),
    (edit(SINGLE, kind='square'), None, {'shape_class'}),
    (edit(SINGLE, color='red'), None, {'shape_color'}),
    (Scene('yellow', [dataclasses.replace(SINGLE.shapes[0], position=None),
                      Shape('circle', 'blue', 'small', None, (0.75, 0.5),
                            0.24)], 'to the left of'),
     caption(SINGLE), {'shape_count'}),
])
def test_wrong_images_fail_exactly_that_attribute(resolution, scene, text,
                                                  wrong):
    reference = PAIR if scene.relation == 'above' else SINGLE
    judged = judge_image(to_uint8(scene, resolution),
                         text or caption(reference))
    assert wrong_attributes(judged) == wrong
    assert judged['all_correct'] is (not wrong)


def test_noise_images_score_low():
    rng = np.random.default_rng(0)
    results = []
    for i in range(60):
        resolution = 64 if i % 2 else 256
        scene = sample_scene(rng)
        noise = rng.integers(0, 256, (resolution, resolution, 3), np.uint8)
        results.append(judge_image(noise, caption(scene, rng)))
    for a, limit in [('background', 0.3), ('shape_color', 0.05),
                     ('shape_class', 0.05), ('all_correct', 0.0)]:
        assert np.mean([r[a] for r in results]) <= limit, a


def test_judge_input_formats_and_detection():
    hwc = to_uint8(PAIR, 64)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    assert judge_image(chw, caption(PAIR))['all_correct']
    found = detect_shapes(hwc)
    assert found['background'] == 'white'
    red, blue = found['components']
    assert (red['color'], red['kind'], red['size']) == ('red', 'circle',
                                                        'large')
    assert (blue['color'], blue['kind'], blue['size']) == ('blue', 'square',
                                                           'small')
    assert red['center'] == pytest.approx((0.5, 0.3), abs=1.5 / 64)
    assert red['extent'] == pytest.approx(0.42, abs=1.5 / 64)
    with pytest.raises(TypeError, match='uint8'):
        judge_image(hwc.astype(np.float32), caption(PAIR))


def test_judge_ignores_specks_and_tolerates_soft_edges():
    img = to_uint8(SINGLE, 256).astype(np.float32)
    img[10:14, 200:204] = (0, 0, 255)  # 16-pixel blue speck
    soft = torch.nn.functional.avg_pool2d(
        torch.from_numpy(img).permute(2, 0, 1)[None], 5, 1, 2,
        count_include_pad=False)[0]
    judged = judge_image(soft.round().to(torch.uint8), caption(SINGLE))
    assert judged['all_correct'] and len(judged['detected']['components']) == 1


def sample(scene: Scene, text: str = None, **extra) -> dict:
    image = torch.from_numpy(to_uint8(scene, 64)).permute(2, 0, 1)
    return dict(prompt=text or caption(scene), image=image, **extra)


def test_metric_process_and_compute():
    rng = np.random.default_rng(0)
    seen = [sample_scene(rng) for _ in range(3)]
    held = [sample_scene(rng, 'held_out') for _ in range(2)]
    samples = [sample(s, held_out=False) for s in seen]
    samples.append(
        BaseDataElement(prompt=caption(SINGLE), image=sample(SINGLE)['image']))
    samples.append(sample(held[0]))  # held_out inferred from the prompt
    used = {held[1].background} | {s.color for s in held[1].shapes}
    wrong_bg = next(c for c in COLORS if c not in used)
    samples.append(sample(edit(held[1], background=wrong_bg),
                          caption(held[1]), held_out=torch.tensor(True)))
    samples.append(dict(prompt='a cat on a mat', image=samples[0]['image']))
    metric = ShapesAccuracy()
    metric.process({}, samples[:4])
    metric.process({}, samples[4:])
    metrics = metric.evaluate(len(samples))
    assert metrics['shapes/unparsed/count'] == 1
    assert metrics['shapes/seen/count'] == 4
    assert metrics['shapes/held_out/count'] == 2
    for a in ('background', 'shape_color', 'shape_class', 'shape_count',
              'all'):
        assert metrics[f'shapes/seen/{a}'] == 100.0
    assert metrics['shapes/seen/position'] == 100.0
    assert metrics['shapes/held_out/background'] == 50.0
    assert metrics['shapes/held_out/shape_color'] == 100.0
    assert metrics['shapes/held_out/all'] == 50.0


def test_metric_class_two_kinds_counts_only_pairs_of_different_kinds():
    swapped = edit(edit(PAIR, 0, kind='square'), 1, kind='circle')
    two_circles = edit(PAIR, 1, kind='circle')
    metric = ShapesAccuracy()
    metric.process({}, [
        sample(PAIR),                       # right kinds in the right places
        sample(swapped, caption(PAIR)),     # right kinds, each in the other's place
        sample(two_circles),                # one kind twice, as asked: not counted
        sample(SINGLE),                     # one shape: not counted
    ])
    metrics = metric.evaluate(4)
    assert metrics['shapes/seen/count'] == 4
    assert metrics['shapes/seen/shape_class'] == 75.0
    assert metrics['shapes/seen/class_two_kinds'] == 50.0
    assert metrics['shapes/seen/shape_color'] == 100.0
    assert 'shapes/held_out/class_two_kinds' not in metrics


def test_metric_registry_build():
    from mmagic.registry import METRICS
    metric = METRICS.build(dict(type='ShapesAccuracy'))
    assert isinstance(metric, ShapesAccuracy)
    assert metric.prefix == 'shapes'
