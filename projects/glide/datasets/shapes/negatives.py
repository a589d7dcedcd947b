"""Hard-negative captions of shapes scenes, for contrastive training of a CLIP
that has to bind words to shapes.

A hard negative is the item's own caption, in its own wording, case and
punctuation, with one thing changed so that it is false of the scene:

* binding: ``kinds_swapped`` (the two shapes' kinds exchanged),
  ``colors_swapped`` (their colours exchanged), ``relation_flipped`` (the
  opposite relation word, or the two shape phrases exchanged);
* one attribute: ``kind_changed``, ``color_changed``, ``background_changed``,
  ``size_changed`` (the other size word, or the wrong size inserted where the
  caption has none), ``position_changed`` (single shapes whose caption has a
  position).

Every negative parses (:func:`parse_caption`) and :func:`describes` says it is
false of the scene. Negatives of a scene that is not held out never mention
a held-out pair, so training never shows those words.
"""
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from mmagic.registry import TRANSFORMS
from mmengine.dataset import default_collate
from mmengine.registry import FUNCTIONS

from .captions import (
    _ARTICLES,
    _POSITION_ALIASES,
    _POSITION_FILLERS,
    _POSITION_PHRASES,
    _RELATION_PHRASES,
    _SIZE_ALIASES,
    _SIZE_WORDS,
    _find_relation,
    parse_caption,
)
from .scene import COLORS, KINDS, POSITIONS, Scene, Shape, is_held_out

BINDING_TYPES = ('kinds_swapped', 'colors_swapped', 'relation_flipped')
ATTRIBUTE_TYPES = ('kind_changed', 'color_changed', 'background_changed', 'size_changed',
                   'position_changed')
NEGATIVE_TYPES = BINDING_TYPES + ATTRIBUTE_TYPES
_OPPOSITE = {'above': 'below', 'below': 'above', 'to the left of': 'to the right of',
             'to the right of': 'to the left of', 'small': 'large', 'large': 'small'}
_WORD = re.compile(r'[A-Za-z]+')


class HardNegative(NamedTuple):
    """A negative caption, its type (one of :data:`NEGATIVE_TYPES`) and its
    meaning (:func:`meaning` of its parse)."""
    type: str
    text: str
    meaning: tuple


# ------------------------------------------------------------------ truth --
def _ordered(scene: Scene) -> Tuple[List[Shape], Optional[str]]:
    """The shapes and relation read as ``above`` / ``to the left of`` (``A below
    B`` is ``B above A``)."""
    if scene.relation in ('below', 'to the right of'):
        return scene.shapes[::-1], _OPPOSITE[scene.relation]
    return list(scene.shapes), scene.relation


def meaning(spec: Scene) -> tuple:
    """A hashable key equal for two specs exactly when they state the same."""
    shapes, relation = _ordered(spec)
    return spec.background, relation, tuple((s.kind, s.color, s.size, s.position) for s in shapes)


def describes(spec: Scene, scene: Scene) -> bool:
    """Whether everything caption ``spec`` states (a :func:`parse_caption`
    result; size and position may be unstated) is true of ``scene``."""
    stated, relation = _ordered(spec)
    actual, actual_relation = _ordered(scene)
    return (spec.background == scene.background and relation == actual_relation
            and len(stated) == len(actual)
            and all((s.kind, s.color) == (a.kind, a.color) and s.size in (None, a.size)
                    and s.position in (None, a.position) for s, a in zip(stated, actual)))


# ---------------------------------------------------------------- editing --
def _cased(word: str, like: str) -> str:
    """``word`` in the case of ``like`` (upper, capitalised or lower)."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[0].isupper() else word.lower()


class _Caption:
    """A caption as its words and the text around them, edited by word index."""

    def __init__(self, text: str):
        self.words = _WORD.findall(text)
        self.gaps = _WORD.split(text)  # before each word, and after the last
        self.lower = [w.lower() for w in self.words]

    def replaced(self, start: int, end: int, new: Sequence[str]) -> '_Caption':
        """A copy with ``words[start:end]`` (at least one word) replaced by
        ``new`` joined by spaces; each new word takes the case of the old word
        at its place (of the last old word beyond the span)."""
        old = self.words[start:end]
        cased = [_cased(w, old[min(i, len(old) - 1)]) for i, w in enumerate(new)]
        head = ''.join(g + w for g, w in zip(self.gaps[:start], self.words[:start]))
        tail = ''.join(g + w for g, w in zip(self.gaps[end:], self.words[end:]))
        return _Caption(head + self.gaps[start] + ' '.join(cased) + tail + self.gaps[-1])

    def swapped(self, first: Tuple[int, int], second: Tuple[int, int]) -> '_Caption':
        """A copy with the word spans ``first`` and ``second`` (after it) exchanged."""
        later = self.replaced(*second, self.lower[first[0]:first[1]])
        return later.replaced(*first, self.lower[second[0]:second[1]])

    def text(self) -> str:
        """The caption, each ``a`` / ``an`` fitted to the word after it."""
        words = list(self.words)
        for i, word in enumerate(words[:-1]):
            if word.lower() in ('a', 'an'):
                words[i] = _cased('an' if words[i + 1][0].lower() in 'aeiou' else 'a', word)
        return ''.join(g + w for g, w in zip(self.gaps, words)) + self.gaps[-1]


class _Slot(NamedTuple):
    """Word indices of one shape phrase: its span, kind, colour and size word."""
    start: int
    kind: int
    color: int
    size: Optional[int]


def _shape_slots(lower: List[str]) -> List[_Slot]:
    """The shape phrases (``[article] [size] colour kind``, attributes in any
    order) in the order of the caption, i.e. of the scene's shapes."""
    slots = []
    for k, word in enumerate(lower):
        if word in KINDS:
            j, found = k - 1, {}
            while j >= 0 and (lower[j] in COLORS or lower[j] in _SIZE_ALIASES):
                found['color' if lower[j] in COLORS else 'size'] = j
                j -= 1
            start = j if j >= 0 and lower[j] in _ARTICLES else j + 1
            slots.append(_Slot(start, k, found['color'], found.get('size')))
    return slots


def _position_span(lower: List[str]) -> Optional[Tuple[int, int]]:
    """The word span of a single shape's position phrase, None if absent."""
    hits = [i for i, w in enumerate(lower) if w in _POSITION_ALIASES]
    if not hits:
        return None
    start, end = hits[0], hits[0] + 1
    while start > 0 and lower[start - 1] in _POSITION_FILLERS:
        start -= 1
    return start, end + (end < len(lower) and lower[end] == 'side')


def _edits(cap: _Caption, scene: Scene) -> List[Tuple[str, _Caption]]:
    """Every single-change edit of the caption of ``scene``, typed, unchecked."""
    lower, slots = cap.lower, _shape_slots(cap.lower)
    out = []
    if len(slots) == 2:
        a, b = slots
        out += [('kinds_swapped', cap.swapped((a.kind, a.kind + 1), (b.kind, b.kind + 1))),
                ('colors_swapped', cap.swapped((a.color, a.color + 1), (b.color, b.color + 1))),
                ('relation_flipped', cap.swapped((a.start, a.kind + 1), (b.start, b.kind + 1)))]
        start, end, relation = _find_relation(lower)[0]
        out += [('relation_flipped', cap.replaced(start, end, phrase.split()))
                for phrase in _RELATION_PHRASES[_OPPOSITE[relation]]]
    for slot, shape in zip(slots, scene.shapes):
        out += [('kind_changed', cap.replaced(slot.kind, slot.kind + 1, [k])) for k in KINDS]
        out += [('color_changed', cap.replaced(slot.color, slot.color + 1, [c])) for c in COLORS]
        if slot.size is not None:
            wrong = _OPPOSITE[_SIZE_ALIASES[lower[slot.size]]]
            out += [('size_changed', cap.replaced(slot.size, slot.size + 1, [w]))
                    for w in _SIZE_WORDS[wrong]]
        else:
            out += [('size_changed', cap.replaced(slot.color, slot.color + 1, [w, lower[slot.color]]))
                    for w in _SIZE_WORDS[_OPPOSITE[shape.size]]]
    background = lower.index('background') - 1
    out += [('background_changed', cap.replaced(background, background + 1, [c])) for c in COLORS]
    span = _position_span(lower) if len(slots) == 1 else None
    if span is not None:
        out += [('position_changed', cap.replaced(*span, phrase.split()))
                for p in POSITIONS for phrase in _POSITION_PHRASES[p]]
    return out


def negative_candidates(prompt: str, scene: Scene) -> List[HardNegative]:
    """All valid hard negatives of ``prompt``, a caption of the concrete
    ``scene``: they parse, are false of the scene, name two different shapes
    and, unless the scene is held out, no held-out pair."""
    if not describes(parse_caption(prompt), scene):
        raise ValueError(f'caption {prompt!r} does not describe its scene')
    allow_held_out = is_held_out(scene)
    found: Dict[tuple, HardNegative] = {}
    for neg_type, edited in _edits(_Caption(prompt), scene):
        text = edited.text()
        try:
            spec = parse_caption(text)
        except ValueError:  # e.g. a shape given the background's colour
            continue
        pairs = {(s.kind, s.color) for s in spec.shapes}
        if (describes(spec, scene) or len(pairs) < len(spec.shapes)
                or (is_held_out(spec) and not allow_held_out)):
            continue
        found.setdefault((neg_type, text), HardNegative(neg_type, text, meaning(spec)))
    return list(found.values())


def hard_negatives(prompt: str, scene: Scene, num: int, rng: np.random.Generator) -> List[HardNegative]:
    """``num`` hard negatives of ``prompt`` (a caption of ``scene``).

    Types take turns, the binding types first (each available one is in
    every set of 4 or more), then the attribute types in a random order;
    within a type the choice is random. Negatives differ in meaning while
    possible, then repeat from the first.
    """
    by_type: Dict[str, List[HardNegative]] = {}
    for neg in negative_candidates(prompt, scene):
        by_type.setdefault(neg.type, []).append(neg)
    pools = {t: [ns[i] for i in rng.permutation(len(ns))] for t, ns in by_type.items()}
    attributes = [t for t in ATTRIBUTE_TYPES if t in pools]
    order = ([t for t in BINDING_TYPES if t in pools]
             + [attributes[i] for i in rng.permutation(len(attributes))])
    chosen, meanings = [], set()
    while len(chosen) < num and any(pools.values()):
        for t in order:
            while pools[t] and len(chosen) < num:
                neg = pools[t].pop()
                if neg.meaning not in meanings:
                    chosen.append(neg)
                    meanings.add(neg.meaning)
                    break
    if not chosen:
        raise ValueError(f'no hard negative exists for caption {prompt!r}')
    return [chosen[i % len(chosen)] for i in range(num)]


@TRANSFORMS.register_module()
class HardNegativeCaptions:
    """``ShapesDataset`` transform adding ``negatives`` (``num`` str) and
    ``negative_types`` (their types) of the item's ``prompt`` and ``scene``.

    The choice depends only on ``seed`` and the item's ``index``.

    Args:
        num (int): negatives per item (>= 1).
        seed (int): seed of the choice.
    """

    def __init__(self, num: int = 4, seed: int = 0):
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f'HardNegativeCaptions: num must be an int >= 1, got {num!r}')
        self.num, self.seed = num, int(seed)

    def __call__(self, item: dict) -> dict:
        missing = [k for k in ('prompt', 'scene', 'index') if k not in item]
        if missing:
            raise KeyError(f'HardNegativeCaptions needs the item keys {missing}')
        rng = np.random.default_rng([self.seed, int(item['index'])])
        negs = hard_negatives(item['prompt'], Scene.from_dict(item['scene']), self.num, rng)
        item['negatives'] = [n.text for n in negs]
        item['negative_types'] = [n.type for n in negs]
        return item

    def __repr__(self) -> str:
        return f'HardNegativeCaptions(num={self.num}, seed={self.seed})'


_ITEM_MAJOR = ('negatives', 'negative_types')


@FUNCTIONS.register_module()
def collate_hard_negatives(data_batch: Sequence[dict]) -> dict:
    """mmengine's ``default_collate``, except that ``negatives`` and
    ``negative_types`` stay per item (B lists of K str) and that
    ``caption_matches`` is added: (B, B) bool, ``[i, j]`` whether item j's
    caption is true of item i's scene (in-batch captions that are not
    negatives for an image)."""
    batch = default_collate([{k: v for k, v in item.items() if k not in _ITEM_MAJOR}
                             for item in data_batch])
    for key in _ITEM_MAJOR:
        if key in data_batch[0]:
            batch[key] = [list(item[key]) for item in data_batch]
    specs = [parse_caption(item['prompt']) for item in data_batch]
    scenes = [Scene.from_dict(item['scene']) for item in data_batch]
    batch['caption_matches'] = torch.tensor([[describes(s, scene) for s in specs] for scene in scenes])
    return batch
