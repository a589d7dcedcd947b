"""The procedurally drawn "shapes" world: scenes, captions, renderer, dataset.

An image is a uniform background plus one or two flat, anti-aliased shapes.

Conventions (all geometry is in units of the image side, so a scene renders
identically at any resolution; ``y`` grows downwards):

* Colours: the CSS named colours in :data:`PALETTE`. A shape never has the
  background's colour.
* Kinds: ``circle``, axis-aligned ``square``, upright isosceles ``triangle``
  (apex at the top, base at the bottom, base width == height).
* ``extent``: side of the shape's square bounding box (circle diameter,
  square side, triangle base and height). ``small`` is in [0.22, 0.28]
  (14-18 px at 64x64), ``large`` in [0.40, 0.48] (26-31 px at 64x64).
* ``center``: centre of the bounding box. Every shape keeps a margin of
  0.04 to the image border.
* Positions (single-shape scenes): ``left`` puts the centre in the left third
  (x <= 1/3 - 0.03) and vertically within 0.06 of the middle; ``right``,
  ``top`` and ``bottom`` likewise; ``center`` is within 0.06 of the middle
  on both axes.
* Relations (two-shape scenes, "A <relation> B"): the shapes are stacked along
  the relation's axis with a gap of at least 0.08 between their bounding
  boxes, and their centres differ by at most 0.1 on the other axis, so the
  relation's axis clearly dominates. Two shapes differ in colour or kind.

Captions follow a small grammar (see :func:`caption` / :func:`parse_caption`),
e.g. ``a small yellow triangle on the left, white background`` or
``A blue triangle above a red circle on a white background.``
"""
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmagic.registry import DATASETS
from torch.utils.data import Dataset

from ..models.tokenizer import GlideTokenizer

PALETTE: Dict[str, Tuple[int, int, int]] = {
    'red': (255, 0, 0),
    'green': (0, 128, 0),
    'blue': (0, 0, 255),
    'yellow': (255, 255, 0),
    'purple': (128, 0, 128),
    'orange': (255, 165, 0),
    'white': (255, 255, 255),
    'black': (0, 0, 0),
}
COLORS: Tuple[str, ...] = tuple(PALETTE)
KINDS: Tuple[str, ...] = ('circle', 'square', 'triangle')
SIZES: Tuple[str, ...] = ('small', 'large')
POSITIONS: Tuple[str, ...] = ('left', 'right', 'top', 'bottom', 'center')
RELATIONS: Tuple[str, ...] = ('above', 'below', 'to the left of',
                              'to the right of')
MAX_SHAPES = 2

SIZE_EXTENTS: Dict[str, Tuple[float, float]] = {
    'small': (0.22, 0.28),
    'large': (0.40, 0.48),
}
MARGIN = 0.04
SUPERSAMPLED_SIDE = 256  # anti-aliasing uses >= this many samples per side
MIN_GAP = 0.08
_THIRD_INSET = 0.03
_MID_JITTER = 0.06
_CROSS_JITTER = 0.05

# (colour, kind) pairs never shown in training; plus any yellow shape on black.
HELD_OUT_PAIRS = frozenset({('green', 'triangle'), ('purple', 'circle'),
                            ('orange', 'square'), ('white', 'triangle')})

SPLITS: Dict[str, int] = {'train': 0, 'seen': 1, 'held_out': 2}


@dataclass
class Shape:
    """One shape. ``size``/``position`` may be None in a caption spec;
    ``center`` (x, y) and ``extent`` are None until the scene is laid out."""
    kind: str
    color: str
    size: Optional[str] = None
    position: Optional[str] = None
    center: Optional[Tuple[float, float]] = None
    extent: Optional[float] = None


@dataclass
class Scene:
    """A background colour, one or two shapes and, for two shapes, the
    relation of ``shapes[0]`` to ``shapes[1]``.

    A scene parsed from a caption is a *spec* (geometry unset); a scene from
    :func:`realize_scene` / :func:`sample_scene` is concrete and renderable.
    """
    background: str
    shapes: List[Shape] = field(default_factory=list)
    relation: Optional[str] = None

    def __post_init__(self):
        if self.background not in PALETTE:
            raise ValueError(f'unknown background colour {self.background!r}')
        if not 1 <= len(self.shapes) <= MAX_SHAPES:
            raise ValueError(f'a scene has 1 or 2 shapes, got '
                             f'{len(self.shapes)}')
        if (self.relation is None) != (len(self.shapes) == 1):
            raise ValueError('two shapes need exactly one relation (one of '
                             f'{", ".join(RELATIONS)}); one shape needs none')
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f'unknown relation {self.relation!r}')
        for s in self.shapes:
            if s.kind not in KINDS:
                raise ValueError(f'unknown shape {s.kind!r}')
            if s.color not in PALETTE:
                raise ValueError(f'unknown colour {s.color!r}')
            if s.color == self.background:
                raise ValueError(f'the {s.color} {s.kind} has the background '
                                 f'colour {self.background!r}')
            if s.size is not None and s.size not in SIZES:
                raise ValueError(f'unknown size {s.size!r}')
            if s.position is not None and s.position not in POSITIONS:
                raise ValueError(f'unknown position {s.position!r}')
            if s.position is not None and self.relation is not None:
                raise ValueError('a position cannot be combined with a '
                                 'relation')

    @property
    def is_concrete(self) -> bool:
        """True when every shape has a centre and an extent."""
        return all(s.center is not None and s.extent is not None
                   for s in self.shapes)

    def to_dict(self) -> dict:
        """JSON-serialisable dict with a fixed schema, so that default
        collate functions can batch it: ``background`` str, ``relation`` str
        ('' if none), ``num_shapes`` int and ``shapes``, always
        ``MAX_SHAPES`` dicts (``kind``, ``color``, ``size``, ``position``
        str, '' if unset; ``center`` [x, y] and ``extent`` float, -1 if
        unset); slots beyond ``num_shapes`` are blank."""
        slots = []
        for i in range(MAX_SHAPES):
            s = self.shapes[i] if i < len(self.shapes) else None
            slots.append(
                dict(
                    kind=s.kind if s else '',
                    color=s.color if s else '',
                    size=(s.size or '') if s else '',
                    position=(s.position or '') if s else '',
                    center=[float(c) for c in s.center]
                    if s and s.center is not None else [-1.0, -1.0],
                    extent=float(s.extent)
                    if s and s.extent is not None else -1.0))
        return dict(
            background=self.background,
            relation=self.relation or '',
            num_shapes=len(self.shapes),
            shapes=slots)

    @classmethod
    def from_dict(cls, d: dict) -> 'Scene':
        """Inverse of :meth:`to_dict`."""
        shapes = []
        for s in d['shapes'][:d['num_shapes']]:
            center = tuple(float(c) for c in s['center'])
            shapes.append(
                Shape(
                    kind=s['kind'],
                    color=s['color'],
                    size=s['size'] or None,
                    position=s['position'] or None,
                    center=None if center[0] < 0 else center,
                    extent=None if s['extent'] < 0 else float(s['extent'])))
        return cls(d['background'], shapes, d['relation'] or None)


def is_held_out(scene: Scene) -> bool:
    """Whether a scene (or caption spec) is reserved for evaluation: it has a
    green triangle, purple circle, orange square or white triangle, or any
    yellow shape on a black background."""
    for s in scene.shapes:
        if (s.color, s.kind) in HELD_OUT_PAIRS:
            return True
        if s.color == 'yellow' and scene.background == 'black':
            return True
    return False


# --------------------------------------------------------------- sampling --


def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def sample_spec(rng: np.random.Generator,
                two_shape_prob: float = 0.4) -> Scene:
    """Sample the discrete attributes of a random scene (no geometry)."""
    background = _choice(rng, COLORS)
    colors = [c for c in COLORS if c != background]
    n = 2 if rng.random() < two_shape_prob else 1
    shapes = []
    while len(shapes) < n:
        s = Shape(_choice(rng, KINDS), _choice(rng, colors),
                  _choice(rng, SIZES))
        if all((s.kind, s.color) != (o.kind, o.color) for o in shapes):
            shapes.append(s)
    if n == 1:
        shapes[0].position = _choice(rng, POSITIONS)
        return Scene(background, shapes)
    return Scene(background, shapes, _choice(rng, RELATIONS))


def _axis_range(slot: str, half: float) -> Tuple[float, float]:
    if slot == 'low':
        return MARGIN + half, 1 / 3 - _THIRD_INSET
    if slot == 'high':
        return 2 / 3 + _THIRD_INSET, 1 - MARGIN - half
    return 0.5 - _MID_JITTER, 0.5 + _MID_JITTER


_POSITION_SLOTS = {
    'left': ('low', 'mid'),
    'right': ('high', 'mid'),
    'top': ('mid', 'low'),
    'bottom': ('mid', 'high'),
    'center': ('mid', 'mid'),
}


def _layout_pair(a: Shape, b: Shape, relation: str,
                 rng: np.random.Generator) -> None:
    """Place ``a`` and ``b`` (extents set) so that ``a <relation> b``."""
    first, second = (a, b) if relation in ('above', 'to the left of') \
        else (b, a)
    slack = 1 - 2 * MARGIN - MIN_GAP - a.extent - b.extent
    lead = slack * rng.random()
    gap = MIN_GAP + (slack - lead) * rng.random()
    along_first = MARGIN + lead + first.extent / 2
    along_second = along_first + (first.extent + second.extent) / 2 + gap
    half = max(a.extent, b.extent) / 2
    cross = rng.uniform(MARGIN + half, 1 - MARGIN - half)
    vertical = relation in ('above', 'below')
    for s, along in ((first, along_first), (second, along_second)):
        h = s.extent / 2
        c = float(np.clip(cross + rng.uniform(-_CROSS_JITTER, _CROSS_JITTER),
                          MARGIN + h, 1 - MARGIN - h))
        s.center = (c, along) if vertical else (along, c)


def realize_scene(spec: Scene, rng: np.random.Generator) -> Scene:
    """Return a concrete copy of ``spec``: sample missing sizes (and, for a
    single shape, the position), extents and centres (see module doc)."""
    shapes = [
        Shape(s.kind, s.color, s.size or _choice(rng, SIZES), s.position)
        for s in spec.shapes
    ]
    if spec.relation is None:
        s = shapes[0]
        s.position = s.position or _choice(rng, POSITIONS)
        s.extent = rng.uniform(*SIZE_EXTENTS[s.size])
        sx, sy = _POSITION_SLOTS[s.position]
        s.center = (rng.uniform(*_axis_range(sx, s.extent / 2)),
                    rng.uniform(*_axis_range(sy, s.extent / 2)))
    else:
        a, b = shapes
        budget = 1 - 2 * MARGIN - MIN_GAP
        lo_a, hi_a = SIZE_EXTENTS[a.size]
        lo_b, hi_b = SIZE_EXTENTS[b.size]
        a.extent = rng.uniform(lo_a, min(hi_a, budget - lo_b))
        b.extent = rng.uniform(lo_b, min(hi_b, budget - a.extent))
        _layout_pair(a, b, spec.relation, rng)
    for s in shapes:
        s.center = (float(s.center[0]), float(s.center[1]))
        s.extent = float(s.extent)
    return Scene(spec.background, shapes, spec.relation)


def sample_scene(rng: np.random.Generator,
                 split: str = 'train',
                 two_shape_prob: float = 0.4) -> Scene:
    """Sample a concrete scene; ``held_out`` draws only held-out scenes,
    ``train``/``seen`` only the others."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {tuple(SPLITS)}, got '
                         f'{split!r}')
    want_held_out = split == 'held_out'
    while True:
        spec = sample_spec(rng, two_shape_prob)
        if is_held_out(spec) == want_held_out:
            return realize_scene(spec, rng)


# -------------------------------------------------------------- rendering --


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
    and the shape's anti-aliased coverage there, float64 in [0, 1]: ``clip(0.5
    - signed distance in samples, 0, 1)`` on ``s = ceil(SUPERSAMPLED_SIDE /
    R)`` x ``s`` samples per pixel, averaged."""
    ss = max(1, -(-SUPERSAMPLED_SIDE // res))
    h = shape.extent / 2
    wx = _pixel_window(shape.center[0] - h, shape.center[0] + h, res)
    wy = _pixel_window(shape.center[1] - h, shape.center[1] + h, res)
    xs = (np.arange(wx.start * ss, wx.stop * ss) + 0.5) / (res * ss)
    ys = (np.arange(wy.start * ss, wy.stop * ss) + 0.5) / (res * ss)
    cov = np.clip(0.5 - _signed_distance(shape, xs, ys) * (res * ss), 0, 1)
    return wy, wx, cov.reshape(len(ys) // ss, ss, len(xs) // ss, ss).mean((1, 3))


def _check_concrete(scene: Scene) -> None:
    if not scene.is_concrete:
        raise ValueError('scene has no layout; call realize_scene first')


def render_scene(scene: Scene, resolution: int, kind_neutral: bool = False) -> np.ndarray:
    """Render a concrete scene as float32 (R, R, 3) RGB in [0, 1].

    Coverage is anti-aliased by supersampling (:func:`shape_coverage`), so a
    render at R equals the box-downsampled render at ``R * s`` (e.g. 64 vs
    256) up to float rounding. Palette colours are exact (``round(x * 255)``)
    wherever coverage is full. With ``kind_neutral`` each shape's coverage is
    the mean of the three kinds' at its centre and extent: the layout and the
    colours without the kinds (a soft blob), for analysis.
    """
    _check_concrete(scene)
    res = int(resolution)
    img = np.empty((res, res, 3), np.float32)
    img[:] = np.asarray(PALETTE[scene.background], np.float32) / 255
    for s in scene.shapes:
        if kind_neutral:
            wy, wx, covs = _kind_coverages(s, res)
            cov = covs.mean(0)
        else:
            wy, wx, cov = shape_coverage(s, res)
        color = np.asarray(PALETTE[s.color], np.float32) / 255
        window = img[wy, wx]
        window += cov.astype(np.float32)[..., None] * (color - window)
    return img


def _kind_coverages(shape: Shape, res: int) -> Tuple[slice, slice, np.ndarray]:
    """:func:`shape_coverage` of ``shape`` as each of :data:`KINDS`: the
    window and the coverages (3, h, w), in the order of :data:`KINDS`."""
    covs = [shape_coverage(replace(shape, kind=k), res) for k in KINDS]
    wy, wx = covs[0][:2]
    return wy, wx, np.stack([c for _, _, c in covs])


def render_kind_mask(scene: Scene, resolution: int) -> np.ndarray:
    """float32 (R, R) in [0, 1]: how much each pixel depends on the kinds of
    the scene's shapes, i.e. the largest minus the smallest coverage that
    any kind (circle, square, triangle) would have there at the same centre
    and extent, maximised over the shapes.

    It is 1 where some kind covers a pixel fully and another not at all
    (the corners of a square's box, the box's upper corners beside a
    triangle), 0 inside every kind (the lower middle of a shape) and away
    from the shapes. ``Glide``'s ``train_cfg.kind_weight`` weighs these
    pixels in the training loss: with the shape pixels alone weighted, a
    wrong kind that covers the right one (a square for a circle) costs next
    to nothing.
    """
    _check_concrete(scene)
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
    _check_concrete(scene)
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


# --------------------------------------------------------------- captions --

_SIZE_WORDS = {'small': ('small', 'little'), 'large': ('large', 'big')}
_POSITION_PHRASES = {
    'left': ('on the left', 'at the left', 'on the left side'),
    'right': ('on the right', 'at the right', 'on the right side'),
    'top': ('at the top', 'on the top', 'near the top'),
    'bottom': ('at the bottom', 'on the bottom', 'near the bottom'),
    'center': ('in the center', 'in the middle', 'in the centre'),
}
_RELATION_PHRASES = {
    'above': ('above', ),
    'below': ('below', 'under', 'beneath'),
    'to the left of': ('to the left of', 'left of'),
    'to the right of': ('to the right of', 'right of'),
}



def _with_article(phrase: str) -> str:
    return ('an ' if phrase[0] in 'aeiou' else 'a ') + phrase


def _shape_phrase(s: Shape, with_size: bool,
                  rng: Optional[np.random.Generator]) -> str:
    words = []
    if with_size and s.size is not None:
        words.append(_choice(rng, _SIZE_WORDS[s.size])
                     if rng is not None else s.size)
    words += [s.color, s.kind]
    return _with_article(' '.join(words))


def caption(scene: Scene, rng: Optional[np.random.Generator] = None) -> str:
    """Describe a scene.

    With ``rng=None`` the caption is canonical: lower case, every known
    attribute, ``... on a <colour> background``. With an ``rng`` the wording,
    word order, case and trailing punctuation vary, and each size (50%) and
    the position (60%) may be omitted; the caption never states anything the
    scene does not satisfy.
    """
    if rng is None:
        parts = [_shape_phrase(s, True, None) for s in scene.shapes]
        text = parts[0]
        if scene.relation is not None:
            text = f'{text} {scene.relation} {parts[1]}'
        elif scene.shapes[0].position is not None:
            text += ' ' + _POSITION_PHRASES[scene.shapes[0].position][0]
        return f'{text} on {_with_article(scene.background)} background'

    parts = [
        _shape_phrase(s, rng.random() < 0.5, rng) for s in scene.shapes
    ]
    text = parts[0]
    background_first = rng.random() < 0.2
    if scene.relation is not None:
        relation = _choice(rng, _RELATION_PHRASES[scene.relation])
        text = f'{text} {relation} {parts[1]}'
    elif scene.shapes[0].position is not None and rng.random() < 0.6:
        where = _choice(rng, _POSITION_PHRASES[scene.shapes[0].position])
        position_first = not background_first and rng.random() < 0.2
        text = f'{where}, {text}' if position_first else f'{text} {where}'
    bg, a_bg = scene.background, _with_article(scene.background)
    form = rng.random()
    if background_first:
        text = f'{_choice(rng, (bg, a_bg))} background with {text}'
    elif form < 0.2:
        text = f'{text}, {bg} background'
    else:
        preposition = _choice(rng, ('on', 'on', 'against', 'with'))
        text = f'{text} {preposition} {a_bg} background'
    style = rng.random()
    if style < 0.3:
        text = text[0].upper() + text[1:]
    elif style < 0.4:
        text = text.title()
    return text + _choice(rng, ('', '', '.', '!'))


_ARTICLES = frozenset({'a', 'an', 'one', 'the', 'single'})
_SIZE_ALIASES = {w: size for size, ws in _SIZE_WORDS.items() for w in ws}
_POSITION_ALIASES = {
    'left': 'left', 'right': 'right', 'top': 'top', 'bottom': 'bottom',
    'center': 'center', 'centre': 'center', 'middle': 'center'
}
_POSITION_FILLERS = frozenset({'on', 'at', 'in', 'near', 'the', 'to'})
_BACKGROUND_PREPOSITIONS = frozenset({'on', 'against', 'with', 'over'})
_RELATION_ALIASES = sorted(
    ((tuple(p.split()), rel) for rel, ps in _RELATION_PHRASES.items()
     for p in ps),
    key=lambda item: -len(item[0]))


def _find_relation(tokens: List[str]) -> List[Tuple[int, int, str]]:
    """All (start, end, relation) matches, longest phrases first, no
    overlapping matches."""
    found, used = [], set()
    for phrase, rel in _RELATION_ALIASES:
        n = len(phrase)
        for i in range(len(tokens) - n + 1):
            span = set(range(i, i + n))
            if tuple(tokens[i:i + n]) == phrase and not span & used:
                found.append((i, i + n, rel))
                used |= span
    return sorted(found)


def _parse_shape(tokens: List[str], text: str) -> Shape:
    phrase = ' '.join(tokens)
    if tokens and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    if not tokens:
        raise ValueError(f'missing shape in caption {text!r}')
    if tokens[-1] not in KINDS:
        raise ValueError(f'unknown shape {tokens[-1]!r} in caption {text!r}; '
                         f'expected one of {", ".join(KINDS)}')
    color = size = None
    for w in tokens[:-1]:
        if w in PALETTE and color is None:
            color = w
        elif w in _SIZE_ALIASES and size is None:
            size = _SIZE_ALIASES[w]
        elif w in PALETTE or w in _SIZE_ALIASES:
            raise ValueError(f'repeated attribute {w!r} in shape phrase '
                             f'{phrase!r} of caption {text!r}')
        else:
            raise ValueError(f'unknown colour or size {w!r} in '
                             f'shape phrase {phrase!r} of caption {text!r}')
    if color is None:
        raise ValueError(f'no colour for the {tokens[-1]} in caption '
                         f'{text!r}; expected one of {", ".join(COLORS)}')
    return Shape(tokens[-1], color, size)


def _split_background(tokens: List[str], text: str) -> Tuple[str, List[str]]:
    hits = [i for i, w in enumerate(tokens) if w == 'background']
    if not hits:
        raise ValueError(f'no background in caption {text!r}; expected e.g. '
                         "'... on a blue background'")
    if len(hits) > 1:
        raise ValueError(f'more than one background in caption {text!r}')
    i = hits[0]
    if i == 0 or tokens[i - 1] not in PALETTE:
        word = tokens[i - 1] if i else ''
        raise ValueError(f'unknown background colour {word!r} in caption '
                         f'{text!r}; expected one of {", ".join(COLORS)}')
    start = i - 1
    if start > 0 and tokens[start - 1] in _ARTICLES:
        start -= 1
    if start > 0 and tokens[start - 1] in _BACKGROUND_PREPOSITIONS:
        start -= 1
    after = tokens[i + 1:]
    if after and after[0] in ('with', 'and'):
        after = after[1:]
    return tokens[i - 1], tokens[:start] + after


def _split_position(tokens: List[str],
                    text: str) -> Tuple[Optional[str], List[str]]:
    hits = [i for i, w in enumerate(tokens) if w in _POSITION_ALIASES]
    if not hits:
        return None, tokens
    if len(hits) > 1:
        raise ValueError(f'more than one position in caption {text!r}')
    i = hits[0]
    start, end = i, i + 1
    while start > 0 and tokens[start - 1] in _POSITION_FILLERS:
        start -= 1
    if end < len(tokens) and tokens[end] == 'side':
        end += 1
    return _POSITION_ALIASES[tokens[i]], tokens[:start] + tokens[end:]


def parse_caption(text: str) -> Scene:
    """Parse a caption of the grammar into a spec :class:`Scene` (geometry
    unset; ``size``/``position`` None where the caption is silent).

    Case, punctuation and extra spaces are ignored. Raises ValueError naming
    the problem for text outside the grammar (unknown colour/shape/word, no
    background, two shapes without a relation, ...).
    """
    tokens = re.sub(r'[^a-z]+', ' ', str(text).lower()).split()
    if not tokens:
        raise ValueError(f'empty caption {text!r}')
    background, rest = _split_background(tokens, text)
    relations = _find_relation(rest)
    if len(relations) > 1:
        raise ValueError(f'more than one relation in caption {text!r}')
    if relations:
        start, end, relation = relations[0]
        if any(w in _POSITION_ALIASES for w in rest[:start] + rest[end:]):
            raise ValueError(f'a position cannot be combined with a relation '
                             f'in caption {text!r}')
        shapes = [
            _parse_shape(rest[:start], text),
            _parse_shape(rest[end:], text)
        ]
    else:
        if sum(w in KINDS for w in rest) > 1:
            raise ValueError('two shapes need a relation '
                             f'({", ".join(RELATIONS)}) in caption {text!r}')
        position, rest = _split_position(rest, text)
        shapes = [_parse_shape(rest, text)]
        shapes[0].position = position
        relation = None
    try:
        return Scene(background, shapes, relation)
    except ValueError as e:
        raise ValueError(f'{e} in caption {text!r}') from None


def scene_from_caption(text: str, rng: np.random.Generator) -> Scene:
    """A concrete random scene satisfying a caption."""
    return realize_scene(parse_caption(text), rng)


# ---------------------------------------------------------------- dataset --


def shape_word_positions(tokenizer, prompt: str, scene: Scene) -> np.ndarray:
    """int64 (2, 2): the positions in ``tokenizer.encode(prompt)`` of the
    colour word and the kind word of ``scene.shapes[0]`` (row 0) and
    ``shapes[1]`` (row 1; -1 for a scene with one shape), ``prompt`` being a
    :func:`caption` of ``scene``. Captions name the shapes in order and no
    shape has the background's colour, so each word is the first token of
    its kind after the one before.

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


def _item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """(R, R, 3) in [0, 1] -> float32 (3, R, R) in [-1, 1]."""
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    return torch.from_numpy(chw * 2 - 1)


@DATASETS.register_module()
class ShapesDataset(Dataset):
    """Endless or finite dataset of random shapes scenes and captions.

    Item ``i`` depends only on ``seed``, ``split``, ``i`` and
    ``two_shape_prob`` (the scene; ``resolution`` only sets the render).

    Args:
        split: ``'train'`` or ``'seen'`` (scenes not held out, different
            streams) or ``'held_out'`` (only held-out scenes).
        size: number of items; None means endless (``len`` is 10**9).
        seed: base seed.
        resolution: side R of ``img``.
        low_res: if set, also return the same scene rendered at this side.
        two_shape_prob: probability of a two-shape (relation) scene.
        kind_mask: if True, items also hold ``kind_mask``, the scene's
            :func:`render_kind_mask` at ``resolution`` (for ``Glide``'s
            ``train_cfg.kind_weight``).
        grounding: if True, items also hold ``grounding_masks``, the
            scene's :func:`render_shape_masks` at ``resolution``, and
            ``grounding_tokens``, the :func:`shape_word_positions` of the
            prompt under the default ``GlideTokenizer`` (for ``Glide``'s
            ``train_cfg.grounding_weight``).
        grounding_kind_region: where the kind word of a shape is grounded:
            ``'shape'`` (default), on the shape's coverage like its colour
            word; ``'box'``, on its bounding box (:func:`render_shape_boxes`),
            the pixels where the kind decides the colour, so
            ``grounding_masks`` is one mask per word, (2, 2, R, R): [shape,
            (colour word on the coverage, kind word on the box)]. A kind
            word kept off its box's corners cannot tell them whether to stay
            background (docs/default_model.md, "Why the class lags").
        crop: if set (needs ``low_res``), return a random ``crop`` x
            ``crop`` window of ``img`` and the window of ``low_res`` that
            covers the same area (side ``crop * r / R``), aligned to the
            low-resolution pixel grid. Super-resolution UNets without
            attention are convolutional, so training them on crops teaches
            the same local task for a fraction of the compute (Imagen,
            Saharia et al. 2022, trains its super-resolution models on
            crops). The window depends only on ``seed``, ``split``, ``i``.

    Items are dicts: ``img`` float32 (3, R, R) RGB in [-1, 1]; ``low_res``
    float32 (3, r, r) in [-1, 1] (only if ``low_res`` is set); ``prompt`` str;
    ``index`` int; ``held_out`` bool; ``scene`` the fixed-schema dict of
    :meth:`Scene.to_dict`; with ``crop`` also ``crop_yx`` (top, left) of the
    window in ``img`` pixels; with ``kind_mask`` also ``kind_mask`` float32
    (1, R, R) in [0, 1] (cropped like ``img``); with ``grounding`` also
    ``grounding_masks`` float32 (2, R, R) in [0, 1] ((2, 2, R, R) with
    ``grounding_kind_region='box'``; cropped like ``img``) and
    ``grounding_tokens`` int64 (2, 2).
    """
    ENDLESS_LENGTH = 10**9
    metainfo = dict(
        dataset_name='shapes', palette=PALETTE, kinds=KINDS,
        positions=POSITIONS, relations=RELATIONS)

    def __init__(self,
                 split: str = 'train',
                 size: Optional[int] = None,
                 seed: int = 0,
                 resolution: int = 64,
                 low_res: Optional[int] = None,
                 two_shape_prob: float = 0.4,
                 kind_mask: bool = False,
                 grounding: bool = False,
                 grounding_kind_region: str = 'shape',
                 crop: Optional[int] = None):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {tuple(SPLITS)}, got '
                             f'{split!r}')
        if size is not None and size < 0:
            raise ValueError(f'size must be None or >= 0, got {size}')
        if crop is not None:
            if low_res is None or resolution % low_res:
                raise ValueError('crop needs low_res, and resolution must be a multiple of '
                                 f'low_res; got resolution={resolution}, low_res={low_res}')
            factor = resolution // low_res
            if not 0 < crop <= resolution or crop % factor:
                raise ValueError(f'crop must be a multiple of {factor} (resolution / low_res) '
                                 f'in [1, {resolution}], got {crop}')
        if grounding_kind_region not in ('shape', 'box'):
            raise ValueError(f"grounding_kind_region must be 'shape' or 'box', got {grounding_kind_region!r}")
        if grounding_kind_region != 'shape' and not grounding:
            raise ValueError(f'grounding_kind_region={grounding_kind_region!r} needs grounding=True')
        self.grounding_kind_region = grounding_kind_region
        self.crop = crop
        self.split = split
        self.size = size
        self.seed = seed
        self.resolution = resolution
        self.low_res = low_res
        self.two_shape_prob = two_shape_prob
        self.kind_mask = kind_mask
        self.tokenizer = GlideTokenizer() if grounding else None

    def __len__(self) -> int:
        return self.ENDLESS_LENGTH if self.size is None else self.size

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0 and self.size is not None:
            index += self.size
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)}')
        return index

    def get_scene(self, index: int) -> Tuple[Scene, str]:
        """The concrete scene and caption of item ``index`` (no rendering)."""
        rng = _item_rng(self.seed, self.split, self._check_index(index))
        scene = sample_scene(rng, self.split, self.two_shape_prob)
        return scene, caption(scene, rng)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        scene, prompt = self.get_scene(index)
        item = dict(
            img=_to_tensor(render_scene(scene, self.resolution)),
            prompt=prompt,
            index=index,
            held_out=self.split == 'held_out',
            scene=scene.to_dict())
        if self.low_res is not None:
            item['low_res'] = _to_tensor(render_scene(scene, self.low_res))
        if self.kind_mask:
            item['kind_mask'] = torch.from_numpy(render_kind_mask(scene, self.resolution)[None])
        if self.tokenizer is not None:
            masks = render_shape_masks(scene, self.resolution)
            if self.grounding_kind_region == 'box':
                masks = np.stack([masks, render_shape_boxes(scene, self.resolution)], axis=1)
            item['grounding_masks'] = torch.from_numpy(masks)
            item['grounding_tokens'] = torch.from_numpy(shape_word_positions(self.tokenizer, prompt, scene))
        if self.crop is not None:
            self._crop(item, index)
        return item

    def _crop(self, item: dict, index: int) -> None:
        factor = self.resolution // self.low_res
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index, 1])
        cells = (self.resolution - self.crop) // factor + 1
        top, left = (int(v) * factor for v in rng.integers(0, cells, size=2))
        for key in ('img', 'kind_mask', 'grounding_masks'):
            if key in item:
                item[key] = item[key][..., top:top + self.crop, left:left + self.crop].contiguous()
        lt, ll, lc = top // factor, left // factor, self.crop // factor
        item['low_res'] = item['low_res'][:, lt:lt + lc, ll:ll + lc].contiguous()
        item['crop_yx'] = (top, left)


def make_prompt_set(split: str,
                    n: int,
                    seed: int = 0,
                    two_shape_prob: float = 0.4) -> List[str]:
    """The captions of the first ``n`` items of ``ShapesDataset(split,
    seed=seed)``."""
    ds = ShapesDataset(split, size=n, seed=seed, two_shape_prob=two_shape_prob)
    return [ds.get_scene(i)[1] for i in range(n)]


def write_prompt_file(path: str, prompts: Sequence[str]) -> None:
    """Write captions to a UTF-8 text file, one per line."""
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(p.replace('\n', ' ') + '\n' for p in prompts)
