"""Per-pixel and per-word targets of shapes scenes for the binding research,
and the ``ShapesDataset`` pipeline transforms that add them to items.

Masks are float32 in [0, 1] at the side R of the item's ``img``; the word
positions index the caption's BPE tokens (``GlideTokenizer.encode``).
"""
from dataclasses import replace
from typing import Tuple

import numpy as np
import torch
from mmagic.registry import TRANSFORMS

from ..datasets.shapes import KINDS, Scene, Shape, check_concrete, render_scene, shape_coverage
from ..models.tokenizer import GlideTokenizer


def _kind_coverages(shape: Shape, res: int) -> Tuple[slice, slice, np.ndarray]:
    """:func:`shape_coverage` of ``shape`` as each of :data:`KINDS`: the
    window and the coverages (3, h, w), in the order of :data:`KINDS`."""
    covs = [shape_coverage(replace(shape, kind=k), res) for k in KINDS]
    wy, wx = covs[0][:2]
    return wy, wx, np.stack([c for _, _, c in covs])


def _mean_kind_coverage(shape: Shape, res: int) -> Tuple[slice, slice, np.ndarray]:
    """The mean of :func:`_kind_coverages`: a soft blob at the shape's place."""
    wy, wx, covs = _kind_coverages(shape, res)
    return wy, wx, covs.mean(0)


def render_kind_neutral(scene: Scene, resolution: int) -> np.ndarray:
    """float32 (R, R, 3) in [0, 1]: :func:`render_scene` with each shape's
    coverage the mean of the three kinds' at its centre and extent, i.e. the
    layout and the colours without the kinds (for analysis)."""
    return render_scene(scene, resolution, coverage=_mean_kind_coverage)


def render_kind_mask(scene: Scene, resolution: int) -> np.ndarray:
    """float32 (R, R) in [0, 1]: how much each pixel depends on the kinds of
    the scene's shapes, i.e. the largest minus the smallest coverage that
    any kind (circle, square, triangle) would have there at the same centre
    and extent, maximised over the shapes.

    It is 1 where some kind covers a pixel fully and another not at all
    (the corners of a square's box, the box's upper corners beside a
    triangle), 0 inside every kind (the lower middle of a shape) and away
    from the shapes. Weighing these pixels in the training loss makes a
    wrong kind that covers the right one (a square for a circle) cost what
    it changes; with the shape pixels alone weighted it costs next to
    nothing.
    """
    check_concrete(scene)
    res = int(resolution)
    mask = np.zeros((res, res), np.float32)
    for s in scene.shapes:
        wy, wx, stack = _kind_coverages(s, res)
        np.maximum(mask[wy, wx], stack.max(0) - stack.min(0), out=mask[wy, wx])
    return mask


def render_shape_masks(scene: Scene, resolution: int) -> np.ndarray:
    """float32 (2, R, R) in [0, 1]: the anti-aliased coverage of
    ``scene.shapes[0]`` and ``scene.shapes[1]`` (zeros for a scene with one
    shape)."""
    check_concrete(scene)
    res = int(resolution)
    masks = np.zeros((2, res, res), np.float32)
    for plane, s in zip(masks, scene.shapes):
        rows, cols, coverage = shape_coverage(s, res)
        plane[rows, cols] = coverage
    return masks


def render_shape_boxes(scene: Scene, resolution: int) -> np.ndarray:
    """float32 (2, R, R) in [0, 1]: the anti-aliased coverage of the
    bounding box (the square of the shape's centre and extent) of
    ``scene.shapes[0]`` and ``scene.shapes[1]`` (zeros for a scene with one
    shape). Every kind fits in the box, so it holds every pixel whose colour
    depends on the shape's kind: the shape and :func:`render_kind_mask`'s
    support."""
    boxes = replace(scene, shapes=[replace(s, kind='square') for s in scene.shapes])
    return render_shape_masks(boxes, resolution)


def shape_word_positions(tokenizer, prompt: str, scene: Scene) -> np.ndarray:
    """int64 (2, 2): the positions in ``tokenizer.encode(prompt)`` of the
    colour word and the kind word of ``scene.shapes[0]`` (row 0) and
    ``shapes[1]`` (row 1; -1 for a scene with one shape), ``prompt`` being a
    :func:`~projects.glide.datasets.shapes.caption` of ``scene``. Captions
    name the shapes in order and no shape has the background's colour, so
    each word is the first token of its kind after the one before.

    Raises:
        ValueError: a word is not in the prompt.
    """
    ids = tokenizer.encode(prompt)
    positions = np.full((2, 2), -1, np.int64)
    start = 0
    for row, s in enumerate(scene.shapes):
        for col, word in enumerate((s.color, s.kind)):
            (token, ) = tokenizer.encode(' ' + word)
            try:
                start = ids.index(token, start)
            except ValueError:
                raise ValueError(f'{word!r} of shape {row + 1} is not in the prompt {prompt!r} '
                                 'after the words before it') from None
            positions[row, col] = start
            start += 1
    return positions


def _scene_and_side(item: dict, transform: str) -> Tuple[Scene, int]:
    """The concrete scene of a ``ShapesDataset`` item and the side R of its
    (uncropped) ``img``."""
    missing = [k for k in ('scene', 'img') if k not in item]
    if missing:
        raise KeyError(f'{transform} needs a ShapesDataset item with scene and img; '
                       f'missing {missing}')
    return Scene.from_dict(item['scene']), int(item['img'].shape[-1])


@TRANSFORMS.register_module()
class KindMask:
    """Adds ``kind_mask``, float32 (1, R, R) in [0, 1]: the item's
    :func:`render_kind_mask`, the pixels a shape's kind decides (for a
    pixel weight on them in the training loss)."""

    def __call__(self, item: dict) -> dict:
        scene, side = _scene_and_side(item, 'KindMask')
        item['kind_mask'] = torch.from_numpy(render_kind_mask(scene, side)[None])
        return item


@TRANSFORMS.register_module()
class ShapeGroundingTargets:
    """Adds what ties each shape's words to its pixels: ``grounding_masks``
    float32 (2, R, R) in [0, 1], the item's :func:`render_shape_masks`, and
    ``grounding_tokens`` int64 (2, 2), the :func:`shape_word_positions` of
    its prompt under ``GlideTokenizer``.

    Args:
        kind_region: where a shape's kind word is grounded: ``'shape'``, on
            the shape's coverage like its colour word; ``'box'``, on its
            bounding box (:func:`render_shape_boxes`), every pixel whose
            colour the kind decides, so ``grounding_masks`` is one mask per
            word, (2, 2, R, R): [shape, (colour word on the coverage, kind
            word on the box)].
        text_ctx: the model's text context; a word at or beyond it (cut by
            the tokenizer) is an error.
    """

    def __init__(self, kind_region: str = 'shape', text_ctx: int = 128):
        if kind_region not in ('shape', 'box'):
            raise ValueError(f"kind_region must be 'shape' or 'box', got {kind_region!r}")
        if isinstance(text_ctx, bool) or not isinstance(text_ctx, int) or text_ctx < 1:
            raise ValueError(f'text_ctx must be a positive int, got {text_ctx!r}')
        self.kind_region = kind_region
        self.tokenizer = GlideTokenizer(text_ctx=text_ctx)

    def __call__(self, item: dict) -> dict:
        scene, side = _scene_and_side(item, 'ShapeGroundingTargets')
        masks = render_shape_masks(scene, side)
        if self.kind_region == 'box':
            masks = np.stack([masks, render_shape_boxes(scene, side)], axis=1)
        positions = shape_word_positions(self.tokenizer, item['prompt'], scene)
        if positions.max() >= self.tokenizer.text_ctx:
            raise ValueError(f'a shape word of {item["prompt"]!r} is at token {positions.max()}, '
                             f'beyond text_ctx={self.tokenizer.text_ctx}')
        item['grounding_masks'] = torch.from_numpy(masks)
        item['grounding_tokens'] = torch.from_numpy(positions)
        return item
