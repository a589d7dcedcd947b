"""Pixel-based judge of how well an image follows a shapes-world caption.

No learned network: every pixel is snapped to the nearest palette colour
(pixels farther than 110 RGB units from all of them are ignored), the
background is the most common colour of the image border, and each other
colour's pixels are cleaned by a morphological opening with a k x k square
(k = 3 up to 191 px, 5 at 256; it removes anti-aliased edge rings, specks and
noise), hole-filled and split into connected components. Components smaller
than 0.6% of the image are ignored (the smallest shape, a small triangle,
covers about 2.4%). Each component is classified by

* kind: ``triangle`` if its rows widen from top to bottom (width asymmetry
  > 0.25), else ``square`` if it fills > 88% of its bounding box, ``circle``
  if 68-88%, else ``other`` (also for inverted triangles and elongated blobs);
* size: ``large`` if the bounding-box side of the ideal shape of its kind
  and area (its own longer side for ``other``) is >= 0.34 of the image side
  (small shapes are 0.22-0.28, large ones 0.40-0.48);
* position: ``center`` if its bounding-box centre is within 1/6 of the image
  centre on both axes, else the side of the dominant offset axis
  (``left``/``right``/``top``/``bottom``);
* relation ``A above B``: B's centre is lower than A's by more than their
  horizontal offset and by at least 0.05 of the image (likewise the others).

Caption shapes are matched to components maximising, in order, colour
matches, kind matches, spatial correctness, size matches and matched area.
"""
from itertools import permutations
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmagic.registry import METRICS
from mmengine.evaluator import BaseMetric
from scipy import ndimage

from projects.glide.datasets.shapes import COLORS, PALETTE, Scene, is_held_out, parse_caption
from projects.glide.images import to_hwc_uint8

from .samples import sample_field

ATTRIBUTES = ('background', 'shape_color', 'shape_class', 'size', 'position',
              'relation', 'shape_count')

_PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], np.float32)
_MAX_COLOR_DISTANCE = 110.0
_MIN_AREA_FRACTION = 0.006
_FILL = {'circle': np.pi / 4, 'square': 1.0, 'triangle': 0.5}
_MAX_COMPONENTS = 6
_LARGE_EXTENT = 0.34
_MIN_RELATION_OFFSET = 0.05


def _palette_labels(img: np.ndarray) -> np.ndarray:
    """(H, W) index into COLORS of each pixel's nearest colour; -1 where it
    is farther than ``_MAX_COLOR_DISTANCE`` from every palette colour."""
    pixels = img.reshape(-1, 3).astype(np.float32)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; the |p|^2 term does not change argmin
    partial = (_PALETTE_RGB**2).sum(1) - 2 * pixels @ _PALETTE_RGB.T
    labels = partial.argmin(1)
    nearest = partial[np.arange(labels.size), labels] + np.einsum(
        'ij,ij->i', pixels, pixels)
    labels[nearest > _MAX_COLOR_DISTANCE**2] = -1
    return labels.reshape(img.shape[:2])


def _classify_kind(mask: np.ndarray) -> str:
    """Kind of a component given its cropped (h, w) boolean mask."""
    h, w = mask.shape
    if max(h, w) > 1.6 * min(h, w):
        return 'other'
    widths = mask.sum(1).astype(np.float32)
    half = h // 2
    asymmetry = (widths[h - half:].mean() - widths[:half].mean()) / w
    if asymmetry > 0.25:
        return 'triangle'
    if asymmetry < -0.25:
        return 'other'
    fill = mask.mean()
    if fill > 0.88:
        return 'square'
    if fill > 0.68:
        return 'circle'
    return 'other'


def _classify_position(cx: float, cy: float) -> str:
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < 1 / 6:
        return 'center'
    if abs(dx) >= abs(dy):
        return 'left' if dx < 0 else 'right'
    return 'top' if dy < 0 else 'bottom'


def _relation_holds(a: dict, b: dict, relation: str) -> bool:
    dx = b['center'][0] - a['center'][0]
    dy = b['center'][1] - a['center'][1]
    along, across = {
        'above': (dy, dx),
        'below': (-dy, dx),
        'to the left of': (dx, dy),
        'to the right of': (-dx, dy),
    }[relation]
    return along > max(abs(across), _MIN_RELATION_OFFSET)


def detect_shapes(img: Union[np.ndarray, torch.Tensor]) -> dict:
    """Find the background and the shapes of a uint8 RGB image.

    Args:
        img: uint8 (H, W, 3) or (3, H, W) array or tensor, square or not.

    Returns:
        ``background`` (palette name or None) and ``components``, a list
        (largest first, at most 6) of dicts: ``color``, ``kind``, ``size``,
        ``position``, ``center`` (x, y) and ``extent`` in units of the image
        side, ``area`` in pixels.
    """
    img = to_hwc_uint8(img)
    height, width = img.shape[:2]
    side = max(height, width)
    labels = _palette_labels(img)
    frame = max(1, side // 32)
    border = np.concatenate([
        labels[:frame].ravel(), labels[-frame:].ravel(),
        labels[:, :frame].ravel(), labels[:, -frame:].ravel()
    ])
    border = border[border >= 0]
    bg = int(np.bincount(border).argmax()) if border.size else -1
    k = 2 * max(1, round(side / 128)) + 1
    min_area = _MIN_AREA_FRACTION * height * width
    counts = np.bincount(labels[labels >= 0], minlength=len(COLORS))
    components = []
    for ci, color in enumerate(COLORS):
        if ci == bg or counts[ci] < min_area:
            continue
        # opening with a k x k square (separable min/max filters) drops thin
        # edge rings, specks and noise pixels stuck to the shape's edges;
        # shapes never nest, so holes are noise too
        mask = ndimage.binary_fill_holes(
            ndimage.maximum_filter(
                ndimage.minimum_filter((labels == ci).view(np.uint8), k,
                                       mode='constant'), k, mode='constant'))
        comp, _ = ndimage.label(mask, np.ones((3, 3), bool))
        for index, sl in enumerate(ndimage.find_objects(comp), 1):
            crop = comp[sl] == index
            area = int(crop.sum())
            if area < min_area:
                continue
            (y0, y1), (x0, x1) = [(s.start, s.stop) for s in sl]
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            kind = _classify_kind(crop)
            extent = max(x1 - x0, y1 - y0) / side
            # bounding-box side of the ideal shape of this area and kind
            ideal_extent = np.sqrt(area / _FILL[kind]) / side \
                if kind in _FILL else extent
            components.append(
                dict(
                    color=color,
                    kind=kind,
                    size='large' if ideal_extent >= _LARGE_EXTENT else 'small',
                    position=_classify_position(cx, cy),
                    center=(cx, cy),
                    extent=extent,
                    area=area))
    components.sort(key=lambda c: -c['area'])
    return dict(
        background=COLORS[bg] if bg >= 0 else None,
        components=components[:_MAX_COMPONENTS])


def _spatial_ok(spec: Scene, matched: List[Optional[dict]]) -> Optional[bool]:
    if spec.relation is not None:
        a, b = matched
        return a is not None and b is not None and _relation_holds(
            a, b, spec.relation)
    want = spec.shapes[0].position
    if want is None:
        return None
    return matched[0] is not None and matched[0]['position'] == want


def judge_image(img: Union[np.ndarray, torch.Tensor],
                spec: Union[Scene, str]) -> dict:
    """Judge whether a uint8 RGB image follows a caption.

    Args:
        img: uint8 (H, W, 3) or (3, H, W) array or tensor.
        spec: a caption or the :class:`Scene` from ``parse_caption``.

    Returns:
        A dict of booleans (None where the caption says nothing about the
        attribute): ``background``; ``shape_color`` (every caption shape is
        matched to a component of its colour); ``shape_class`` (every
        caption shape's matched component has its kind); ``size`` (stated
        sizes); ``position`` (single shape with a stated position);
        ``relation`` (two shapes); ``shape_count`` (exactly as many
        components as caption shapes); ``all_correct`` (all of these that
        are not None). ``detected`` holds :func:`detect_shapes`' output and
        ``matched`` the component (or None) matched to each caption shape.
    """
    if isinstance(spec, str):
        spec = parse_caption(spec)
    found = detect_shapes(img)
    comps = found['components']
    n = len(spec.shapes)
    pool = list(range(len(comps))) + [None] * n
    best, best_score = None, None
    for choice in dict.fromkeys(permutations(pool, n)):
        matched = [comps[i] if i is not None else None for i in choice]
        pairs = [(s, m) for s, m in zip(spec.shapes, matched) if m]
        score = (sum(s.color == m['color'] for s, m in pairs),
                 sum(s.kind == m['kind'] for s, m in pairs),
                 bool(_spatial_ok(spec, matched)),
                 sum(s.size == m['size'] for s, m in pairs),
                 sum(m['area'] for _, m in pairs))
        if best_score is None or score > best_score:
            best, best_score = matched, score
    pairs = list(zip(spec.shapes, best))
    sized = [(s, m) for s, m in pairs if s.size is not None]
    result = dict(
        background=found['background'] == spec.background,
        shape_color=all(m is not None and m['color'] == s.color
                        for s, m in pairs),
        shape_class=all(m is not None and m['kind'] == s.kind
                        for s, m in pairs),
        size=all(m is not None and m['size'] == s.size for s, m in sized)
        if sized else None,
        position=_spatial_ok(spec, best) if spec.relation is None else None,
        relation=_spatial_ok(spec, best) if spec.relation else None,
        shape_count=len(comps) == n)
    result['all_correct'] = all(v for v in result.values() if v is not None)
    result.update(detected=found, matched=best)
    return result


@METRICS.register_module()
class ShapesAccuracy(BaseMetric):
    """Percentage of generated images that follow their shapes caption.

    ``process`` takes ``data_samples``: dicts (or data elements) with
    ``prompt`` (str), ``image`` (uint8 (3, H, W) RGB tensor or array) and
    optionally ``held_out`` (bool; computed from the prompt if missing).

    ``compute_metrics`` returns, for ``g`` in ``seen`` and ``held_out``,
    ``g/count`` and, over the prompts where the attribute applies, the
    percentages ``g/background``, ``g/shape_color``, ``g/shape_class``,
    ``g/size``, ``g/position``, ``g/relation``, ``g/shape_count`` and
    ``g/all``, and ``g/class_two_kinds``: the shape class over the captions
    with two shapes of different kinds only, where drawing the right kinds
    but each in the other's place (or one kind twice) is wrong. It tells
    binding apart from drawing: a model that draws every kind cleanly but
    does not tie it to its colour and place scores high on one-shape
    captions and 25-50% here (25% if each shape takes either kind at
    random, 50% if both kinds are drawn in a random order).
    (Keys are absent when no prompt of the group has the attribute.) Plus
    ``unparsed/count``: prompts outside the grammar, which are skipped.
    """
    default_prefix = 'shapes'

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            prompt = sample_field(sample, 'prompt')
            try:
                spec = parse_caption(prompt)
            except ValueError:
                self.results.append(dict(group='unparsed'))
                continue
            held_out = sample_field(sample, 'held_out')
            held_out = is_held_out(spec) if held_out is None else bool(
                held_out)
            judged = judge_image(sample_field(sample, 'image'), spec)
            record = {a: judged[a] for a in ATTRIBUTES}
            kinds = {shape.kind for shape in spec.shapes}
            record.update(
                all=judged['all_correct'],
                class_two_kinds=judged['shape_class'] if len(kinds) == 2 else None,
                group='held_out' if held_out else 'seen')
            self.results.append(record)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = {
            'unparsed/count': sum(r['group'] == 'unparsed' for r in results)
        }
        for group in ('seen', 'held_out'):
            records = [r for r in results if r['group'] == group]
            metrics[f'{group}/count'] = len(records)
            for attr in ATTRIBUTES + ('all', 'class_two_kinds'):
                values = [r[attr] for r in records if r[attr] is not None]
                if values:
                    metrics[f'{group}/{attr}'] = 100.0 * float(
                        np.mean(values))
        return metrics
