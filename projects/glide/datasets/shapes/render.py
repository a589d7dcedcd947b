"""Rasteriser of the shapes world: anti-aliased flat shapes on a background.

A pixel's coverage by a shape is ``clip(0.5 - signed distance in samples, 0,
1)`` averaged over ``s x s`` samples (``s = ceil(SUPERSAMPLED_SIDE / R)``), so
a render at R equals the box-downsampled render at ``R * s`` (e.g. 64 vs 256)
up to float rounding.
"""
from typing import Callable, Tuple

import numpy as np

from .scene import PALETTE, Scene, Shape

SUPERSAMPLED_SIDE = 256  # anti-aliasing uses >= this many samples per side

# (shape, R) -> (rows, columns, coverage (rows, columns) float64 in [0, 1])
Coverage = Callable[[Shape, int], Tuple[slice, slice, np.ndarray]]


def _signed_distance(shape: Shape, xs: np.ndarray,
                     ys: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) signed distance to the shape's boundary (negative
    inside) at the points (xs, ys), in units of the image side."""
    cx, cy = shape.center
    h = shape.extent / 2
    dx = (xs - cx)[None, :]
    dy = (ys - cy)[:, None]
    if shape.kind == 'circle':
        return np.sqrt(dx * dx + dy * dy) - h
    if shape.kind == 'square':
        return np.maximum(np.abs(dx) - h, np.abs(dy) - h)
    # triangle: apex (cx, cy - h), base corners (cx -/+ h, cy + h)
    below_apex = dy + h
    slant = (2 * np.abs(dx) - below_apex) / np.sqrt(5)
    dist = np.maximum(dy - h, slant)
    # beyond the acute apex the nearest boundary point is the apex itself
    apex_region = np.abs(dx) + 2 * below_apex < 0
    return np.where(apex_region, np.sqrt(dx * dx + below_apex**2), dist)


def _pixel_window(lo: float, hi: float, res: int) -> slice:
    return slice(max(0, int(np.floor(lo * res)) - 1),
                 min(res, int(np.ceil(hi * res)) + 1))


def shape_coverage(shape: Shape, res: int) -> Tuple[slice, slice, np.ndarray]:
    """The pixel window (rows, columns) around ``shape`` in an R x R image
    and the shape's anti-aliased coverage there, float64 in [0, 1] (see the
    module doc)."""
    ss = max(1, -(-SUPERSAMPLED_SIDE // res))
    h = shape.extent / 2
    wx = _pixel_window(shape.center[0] - h, shape.center[0] + h, res)
    wy = _pixel_window(shape.center[1] - h, shape.center[1] + h, res)
    xs = (np.arange(wx.start * ss, wx.stop * ss) + 0.5) / (res * ss)
    ys = (np.arange(wy.start * ss, wy.stop * ss) + 0.5) / (res * ss)
    cov = np.clip(0.5 - _signed_distance(shape, xs, ys) * (res * ss), 0, 1)
    return wy, wx, cov.reshape(len(ys) // ss, ss, len(xs) // ss, ss).mean((1, 3))


def check_concrete(scene: Scene) -> None:
    """Raise ValueError unless ``scene`` is laid out (renderable)."""
    if not scene.is_concrete:
        raise ValueError('scene has no layout; call realize_scene first')


def render_scene(scene: Scene, resolution: int,
                 coverage: Coverage = shape_coverage) -> np.ndarray:
    """Render a concrete scene as float32 (R, R, 3) RGB in [0, 1].

    Each shape's colour is blended over the image by its ``coverage``
    (default :func:`shape_coverage`; another function draws other outlines
    at the same places, e.g. for analysis). Palette colours are exact
    (``round(x * 255)``) wherever coverage is full.
    """
    check_concrete(scene)
    res = int(resolution)
    img = np.empty((res, res, 3), np.float32)
    img[:] = np.asarray(PALETTE[scene.background], np.float32) / 255
    for s in scene.shapes:
        wy, wx, cov = coverage(s, res)
        color = np.asarray(PALETTE[s.color], np.float32) / 255
        window = img[wy, wx]
        window += cov.astype(np.float32)[..., None] * (color - window)
    return img
