"""Scenes of the shapes world: schema, held-out rules and layout sampling.

Geometry is in units of the image side, so a scene renders identically at any
resolution; ``y`` grows downwards.

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
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

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


def check_split(split: str) -> None:
    """Raise ValueError unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {tuple(SPLITS)}, got '
                         f'{split!r}')


# --------------------------------------------------------------- sampling --


def pick(rng: np.random.Generator, options: Sequence):
    """One of ``options``, uniformly (one ``rng.integers`` draw)."""
    return options[int(rng.integers(len(options)))]


def sample_spec(rng: np.random.Generator,
                two_shape_prob: float = 0.4) -> Scene:
    """Sample the discrete attributes of a random scene (no geometry)."""
    background = pick(rng, COLORS)
    colors = [c for c in COLORS if c != background]
    n = 2 if rng.random() < two_shape_prob else 1
    shapes = []
    while len(shapes) < n:
        s = Shape(pick(rng, KINDS), pick(rng, colors), pick(rng, SIZES))
        if all((s.kind, s.color) != (o.kind, o.color) for o in shapes):
            shapes.append(s)
    if n == 1:
        shapes[0].position = pick(rng, POSITIONS)
        return Scene(background, shapes)
    return Scene(background, shapes, pick(rng, RELATIONS))


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
        Shape(s.kind, s.color, s.size or pick(rng, SIZES), s.position)
        for s in spec.shapes
    ]
    if spec.relation is None:
        s = shapes[0]
        s.position = s.position or pick(rng, POSITIONS)
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
    check_split(split)
    want_held_out = split == 'held_out'
    while True:
        spec = sample_spec(rng, two_shape_prob)
        if is_held_out(spec) == want_held_out:
            return realize_scene(spec, rng)
